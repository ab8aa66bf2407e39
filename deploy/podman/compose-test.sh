#!/usr/bin/env bash
# =============================================================================
# deploy/podman/compose-test.sh — `docker compose up` on the repository's own
# docker-compose.yml, exercised for real on a machine without a Docker engine
# and without access to an image registry (what `make compose-test` runs).
#
#   podman (Debian)          runs the containers; `podman system service`
#                            serves the Docker API on a unix socket
#   docker compose v2        the real Compose CLI plugin, built from its Go
#                            module, talking to that socket
#   a Debian base image      debootstrap, imported with `podman import`
#   stand-in images          for the infrastructure images the compose file
#                            names, built from Debian packages and Go modules
#                            (deploy/podman/images/*), honouring the same
#                            variables, ports and healthcheck commands
#   the service images       built from the repository's own Dockerfile, the
#                            base images passed as build arguments
#   compose.override.yml     swaps image names (MongoDB: credentials too; moves published
#                            ports off the native stack's, see below)
#
# Then: `docker compose up --wait`, the end-to-end journeys against the
# gateway, `docker compose down -v`. Nothing is pulled from a registry.
#
# Tools are built once per machine into ~/.cache/shop-stack/ (like
# deploy/local/stack.sh does for FerretDB), keyed by version. Run state
# (the API socket, pid files, logs) lives in <repo>/.local/compose/.
#
# Usage: deploy/podman/compose-test.sh <command>   (see `help`)
# =============================================================================
set -euo pipefail

SCRIPT_DIR="$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")"
REPO_ROOT="$(cd -- "$SCRIPT_DIR/../.." && pwd -P)"

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/shop-stack"
STATE_DIR="$REPO_ROOT/.local/compose"
RUN_DIR="$STATE_DIR/run"
LOG_DIR="$STATE_DIR/logs"

# --- podman -----------------------------------------------------------------
# Our containers.conf is used through CONTAINERS_CONF by every podman we run:
# /etc/containers is left alone. (It says why: runc, ulimits, no systemd.)
export CONTAINERS_CONF="$SCRIPT_DIR/containers.conf"
API_SOCKET="$RUN_DIR/podman.sock"
export DOCKER_HOST="unix://$API_SOCKET"

# --- docker compose ---------------------------------------------------------
COMPOSE_MODULE=github.com/docker/compose/v2
COMPOSE_VERSION=v2.40.3
COMPOSE_BIN="$CACHE/docker-compose-$COMPOSE_VERSION/docker-compose"
# The docker client finds CLI plugins in $DOCKER_CONFIG/cli-plugins. A config
# directory of our own keeps ~/.docker untouched.
export DOCKER_CONFIG="$CACHE/docker-config-compose-$COMPOSE_VERSION"

GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}

# --- images -----------------------------------------------------------------
# Everything built here is named localhost/shop-standin/* (podman's name for
# local images): never confused with a registry's image of the same name.
STANDIN=localhost/shop-standin
DEBIAN_SUITE=bookworm
BASE_IMAGE=$STANDIN/debian:$DEBIAN_SUITE
# The service images' runtime base: the stand-in for distroless/cc-debian12 (images/distroless).
RUNTIME_STANDIN=$STANDIN/distroless-cc:debian12
IMAGES_DIR=$SCRIPT_DIR/images

# Programs the stand-ins are built from (Go modules), cached per version.
FERRETDB_MODULE=github.com/FerretDB/FerretDB
FERRETDB_VERSION=v1.24.2                      # as deploy/local/stack.sh
FERRETDB_BIN="$CACHE/bin/ferretdb"            # shared with deploy/local/stack.sh
MAILPIT_MODULE=github.com/axllent/mailpit
MAILPIT_VERSION=v1.27.11
MAILPIT_BIN="$CACHE/mailpit-$MAILPIT_VERSION/mailpit"
# Jaeger's Go module tags v1.N and v2.M on the same commit; the module proxy here serves only
# some of them (v1.73.0, which is v2.10.0 of the compose file, fails its checksum lookup), so the
# stand-in is the nearest one it serves: v1.76.0 = Jaeger v2.13.0.
JAEGER_MODULE=github.com/jaegertracing/jaeger
JAEGER_MODULE_VERSION=v1.76.0
JAEGER_VERSION=v2.13.0
JAEGER_BIN="$CACHE/jaeger-$JAEGER_VERSION/jaeger"
# MongoDB's shell, from npm (runs on the host's Node.js, >= 20.19), for the mongo stand-in.
MONGOSH_VERSION=2.12.0
MONGOSH_HOME="$CACHE/mongosh-$MONGOSH_VERSION"

# --- the compose run --------------------------------------------------------
PROJECT=${COMPOSE_TEST_PROJECT:-shop-compose-test}
TICK_SECONDS=${COMPOSE_TEST_TICK_SECONDS:-2}

say()  { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die()  { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

as_root() { if (( EUID == 0 )); then "$@"; else sudo "$@"; fi; }

CLEANUP=()
run_cleanup() {
  local i
  # Last queued, first run.
  for (( i = ${#CLEANUP[@]} - 1; i >= 0; i-- )); do eval "${CLEANUP[i]}" || true; done
}
trap run_cleanup EXIT

# =============================================================================
# install: Debian packages, the compose plugin
# =============================================================================
apt_install() {
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

install_packages() {
  local -a missing=()
  command -v podman >/dev/null 2>&1 || missing+=(podman)
  command -v runc >/dev/null 2>&1 || missing+=(runc)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  command -v jq >/dev/null 2>&1 || missing+=(jq)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v docker >/dev/null 2>&1 || missing+=(docker-cli)
  if (( ${#missing[@]} )); then
    say "installing Debian packages: ${missing[*]}"
    # Recommends included: they bring netavark/aardvark-dns (container name
    # resolution), slirp4netns, uidmap and catatonit.
    apt_install "${missing[@]}"
  else
    note "podman $(podman --version | awk '{print $3}'), runc, debootstrap: installed"
  fi
}

compose_installed() {
  [[ -x $COMPOSE_BIN ]] && [[ $("$COMPOSE_BIN" version --short 2>/dev/null) == "${COMPOSE_VERSION#v}" ]]
}

# Compose's go.mod has replace/exclude directives, which `go install pkg@v`
# refuses; building inside a writable copy of the module works.
install_compose() {
  if ! compose_installed; then
    local started=$SECONDS tmp src
    [[ -x $GO ]] || die "the docker compose plugin is built from source and needs Go (>= 1.21): https://go.dev/dl/"
    say "building docker compose $COMPOSE_VERSION from its Go module (first time only, ~3 min)"
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/shop-compose.XXXXXX")
    CLEANUP+=("chmod -R u+w '$tmp'; rm -rf '$tmp'")
    src=$(cd "$tmp" && GOWORK=off GOFLAGS= "$GO" mod download -json "$COMPOSE_MODULE@$COMPOSE_VERSION" \
          | jq -r '.Dir // empty') || die "could not download $COMPOSE_MODULE@$COMPOSE_VERSION"
    [[ -d $src ]] || die "could not download $COMPOSE_MODULE@$COMPOSE_VERSION"
    cp -R "$src" "$tmp/src" && chmod -R u+w "$tmp/src"
    mkdir -p "$(dirname "$COMPOSE_BIN")"
    (cd "$tmp/src" && GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0 "$GO" build -trimpath -buildvcs=false \
        -ldflags "-s -w -X $COMPOSE_MODULE/internal.Version=$COMPOSE_VERSION" \
        -o "$COMPOSE_BIN.new" ./cmd) || die "building docker compose failed (see above)"
    mv -f "$COMPOSE_BIN.new" "$COMPOSE_BIN"
    compose_installed || die "built $COMPOSE_BIN but 'version --short' does not say ${COMPOSE_VERSION#v}"
    note "docker compose built in $((SECONDS - started))s"
  fi
  mkdir -p "$DOCKER_CONFIG/cli-plugins"
  ln -sfn "$COMPOSE_BIN" "$DOCKER_CONFIG/cli-plugins/docker-compose"
  [[ -f $DOCKER_CONFIG/config.json ]] || printf '{}\n' >"$DOCKER_CONFIG/config.json"
  note "docker compose $(docker compose version --short) (plugin in $DOCKER_CONFIG/cli-plugins)"
}

cmd_install() {
  install_packages
  install_compose
}

# =============================================================================
# podman's Docker API service and the healthcheck ticker (ours, stopped by pid)
# =============================================================================
# Background processes are started with setsid (own process group, so a
# Ctrl-C in the terminal does not reach them) and recorded as
# .local/compose/run/<name>.pid + .start (the start time from /proc, so a
# reused pid is never mistaken for ours).
proc_start() {
  local s
  s=$(<"/proc/$1/stat") 2>/dev/null || return 1
  s=${s##*) }
  local -a f
  read -ra f <<<"$s"
  echo "${f[19]}"
}
pidfile() { echo "$RUN_DIR/$1.pid"; }
our_pid() {
  local f pid
  f=$(pidfile "$1")
  [[ -f $f && -f $RUN_DIR/$1.start ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ && $(proc_start "$pid" 2>/dev/null) == "$(<"$RUN_DIR/$1.start")" ]] || return 1
  echo "$pid"
}
launch() {
  local name=$1 pid
  shift
  printf '\n----- %s: starting %s -----\n' "$(date '+%F %T')" "$*" >>"$LOG_DIR/$name.log"
  ( exec nohup setsid "$@" ) >>"$LOG_DIR/$name.log" 2>&1 </dev/null 9>&- &
  pid=$!
  echo "$pid" >"$(pidfile "$name")"
  proc_start "$pid" >"$RUN_DIR/$name.start" || echo gone >"$RUN_DIR/$name.start"
}
stop_ours() {
  local name=$1 pid i
  if pid=$(our_pid "$name"); then
    note "$name: stopping pid $pid"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for (( i = 0; i < 100; i++ )); do our_pid "$name" >/dev/null || break; sleep 0.1; done
    if our_pid "$name" >/dev/null; then
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$(pidfile "$name")" "$RUN_DIR/$name.start"
}

api_up() { curl -fsS --max-time 2 --unix-socket "$API_SOCKET" http://d/_ping >/dev/null 2>&1; }

# Set when this run started the API (commands that only need it for a while stop it again).
STARTED_API=

start_api() {
  local pid i
  if pid=$(our_pid podman-api) && api_up; then
    note "podman API: already serving $DOCKER_HOST (pid $pid)"
    return
  fi
  stop_ours podman-api
  rm -f "$API_SOCKET"
  say "podman API: serving the Docker API on $DOCKER_HOST"
  # --time=0: no idle timeout; it runs until we stop it.
  launch podman-api podman system service --time=0 "$DOCKER_HOST"
  STARTED_API=1
  for (( i = 0; i < 150; i++ )); do api_up && break; sleep 0.2; done
  api_up || die "podman system service did not answer on $API_SOCKET. Log: $LOG_DIR/podman-api.log"
}

start_ticker() {
  local pid
  if pid=$(our_pid health-ticker); then
    note "healthcheck ticker: already running (pid $pid)"
    return
  fi
  say "healthcheck ticker: every ${TICK_SECONDS}s for the containers of compose project $PROJECT"
  launch health-ticker bash "$SCRIPT_DIR/health-ticker.sh" "$PROJECT" "$TICK_SECONDS"
}

stop_background() {
  stop_ours health-ticker
  stop_ours podman-api
}

# =============================================================================
# The Debian base image (debootstrap + podman import)
# =============================================================================
image_exists() { podman image exists "$1"; }

# The Debian mirror apt uses on this machine (first deb822 URIs or
# sources.list line), so the image comes from where the host's packages come.
debian_mirror() {
  local m
  m=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1 || true)
  [[ -n $m ]] || m=$(grep -hsE '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -n1 || true)
  echo "${m:-http://deb.debian.org/debian}"
}

build_base() {
  if image_exists "$BASE_IMAGE"; then
    note "$BASE_IMAGE: present"
    return
  fi
  local mirror tmp started=$SECONDS
  mirror=$(debian_mirror)
  say "$BASE_IMAGE: debootstrap --variant=minbase $DEBIAN_SUITE from $mirror"
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/shop-debian.XXXXXX")
  CLEANUP+=("rm -rf '$tmp'")
  as_root debootstrap --variant=minbase "$DEBIAN_SUITE" "$tmp/root" "$mirror" >"$LOG_DIR/debootstrap.log" 2>&1 \
    || die "debootstrap failed. Last lines of $LOG_DIR/debootstrap.log:
$(tail -n 20 "$LOG_DIR/debootstrap.log")"
  # The same suites as the host: updates and security fixes too.
  printf 'deb %s %s main\n' "$mirror" "$DEBIAN_SUITE" "$mirror" "$DEBIAN_SUITE-updates" \
    "${mirror%/debian}/debian-security" "$DEBIAN_SUITE-security" >"$tmp/root/etc/apt/sources.list"
  # Small images: no recommends, no package caches (as the official images).
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    >"$tmp/root/etc/apt/apt.conf.d/90shop-no-recommends"
  rm -rf "$tmp/root/var/cache/apt/archives/"*.deb "$tmp/root/var/lib/apt/lists/"*
  tar -C "$tmp/root" -c . | podman import \
    --change 'CMD ["/bin/bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --message "debootstrap --variant=minbase $DEBIAN_SUITE $mirror" - "$BASE_IMAGE" >/dev/null
  note "$BASE_IMAGE: built in $((SECONDS - started))s"
}

# =============================================================================
# Stand-in images (deploy/podman/images/<name>/Containerfile)
# =============================================================================
# go_module_src MODULE VERSION DIR: a writable copy of a Go module's source in DIR.
go_module_src() {
  local module=$1 version=$2 dir=$3 src
  [[ -x $GO ]] || die "$module is built from source and needs Go (>= 1.21): https://go.dev/dl/"
  src=$(cd "$(dirname "$dir")" && GOWORK=off GOFLAGS= "$GO" mod download -json "$module@$version" \
        | jq -r '.Dir // empty') || die "could not download $module@$version"
  [[ -d $src ]] || die "could not download $module@$version"
  cp -R "$src" "$dir" && chmod -R u+w "$dir"
}

# The binary deploy/local/stack.sh builds, the same way (see its install_ferretdb for why the
# module is copied and version.txt written): whoever comes first builds it for both.
ensure_ferretdb() {
  if [[ -x $FERRETDB_BIN && $("$FERRETDB_BIN" --version 2>/dev/null) == *"version: $FERRETDB_VERSION"* ]]; then
    return
  fi
  local tmp started=$SECONDS
  say "building FerretDB $FERRETDB_VERSION from its Go module (first time only)"
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/shop-ferretdb.XXXXXX")
  CLEANUP+=("rm -rf '$tmp'")
  go_module_src "$FERRETDB_MODULE" "$FERRETDB_VERSION" "$tmp/src"
  printf '%s\n' "$FERRETDB_VERSION" >"$tmp/src/build/version/version.txt"
  printf 'shop-stack\n' >"$tmp/src/build/version/package.txt"
  mkdir -p "$(dirname "$FERRETDB_BIN")"
  (cd "$tmp/src" && GOWORK=off GOFLAGS= "$GO" build -buildvcs=false -trimpath -o "$FERRETDB_BIN.new" ./cmd/ferretdb) \
    || die "building FerretDB failed (see above)"
  mv -f "$FERRETDB_BIN.new" "$FERRETDB_BIN"
  note "ferretdb built in $((SECONDS - started))s"
}

# Mailpit as its own Dockerfile builds it: the web UI bundled by npm, then `go build`.
ensure_mailpit() {
  [[ -x $MAILPIT_BIN ]] && return
  command -v npm >/dev/null 2>&1 || die "building Mailpit's web UI needs npm (apt-get install nodejs npm)"
  local tmp started=$SECONDS
  say "building Mailpit $MAILPIT_VERSION from its Go module, web UI with npm (first time only, ~3 min)"
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/shop-mailpit.XXXXXX")
  CLEANUP+=("rm -rf '$tmp'")
  go_module_src "$MAILPIT_MODULE" "$MAILPIT_VERSION" "$tmp/src"
  mkdir -p "$(dirname "$MAILPIT_BIN")"
  (cd "$tmp/src" && npm ci --no-audit --no-fund --silent && npm run package --silent \
     && GOWORK=off GOFLAGS= CGO_ENABLED=0 "$GO" build -trimpath -buildvcs=false \
          -ldflags "-s -w -X $MAILPIT_MODULE/config.Version=$MAILPIT_VERSION" -o "$MAILPIT_BIN.new" .) \
    >"$LOG_DIR/mailpit-build.log" 2>&1 \
    || die "building Mailpit failed. Last lines of $LOG_DIR/mailpit-build.log:
$(tail -n 20 "$LOG_DIR/mailpit-build.log")"
  mv -f "$MAILPIT_BIN.new" "$MAILPIT_BIN"
  note "mailpit built in $((SECONDS - started))s"
}

# Jaeger v2 (./cmd/jaeger). Its web UI is a separate npm project the module does not contain;
# the placeholder page the module ships is embedded instead (the API works).
ensure_jaeger() {
  [[ -x $JAEGER_BIN ]] && return
  local tmp started=$SECONDS
  say "building Jaeger $JAEGER_VERSION from its Go module (first time only, ~5 min on 2 cores)"
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/shop-jaeger.XXXXXX")
  CLEANUP+=("rm -rf '$tmp'")
  go_module_src "$JAEGER_MODULE" "$JAEGER_MODULE_VERSION" "$tmp/src"
  cp "$tmp/src/cmd/query/app/ui/placeholder/index.html" "$tmp/src/cmd/query/app/ui/actual/index.html"
  mkdir -p "$(dirname "$JAEGER_BIN")"
  (cd "$tmp/src" && GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0 "$GO" build -trimpath -buildvcs=false \
      -ldflags "-s -w -X $JAEGER_MODULE/internal/version.latestVersion=$JAEGER_VERSION" \
      -o "$JAEGER_BIN.new" ./cmd/jaeger) >"$LOG_DIR/jaeger-build.log" 2>&1 \
    || die "building Jaeger failed. Last lines of $LOG_DIR/jaeger-build.log:
$(tail -n 20 "$LOG_DIR/jaeger-build.log")"
  cp "$tmp/src/cmd/jaeger/sampling-strategies.json" "$(dirname "$JAEGER_BIN")/"
  mv -f "$JAEGER_BIN.new" "$JAEGER_BIN"
  note "jaeger built in $((SECONDS - started))s"
}

# mongosh 2.x needs Node.js >= 20.19 (it require()s ES modules); the image gets the host's node.
node_ok() {
  local v
  v=$(node --version 2>/dev/null) || return 1
  v=${v#v}
  local major=${v%%.*} rest=${v#*.}
  local minor=${rest%%.*}
  (( major > 20 || (major == 20 && minor >= 19) ))
}

ensure_mongosh() {
  node_ok || die "the mongo stand-in runs mongosh $MONGOSH_VERSION on the host's Node.js, which must be >= 20.19
       (found: $(node --version 2>/dev/null || echo none)); Debian bookworm's nodejs 18 is too old"
  [[ -x $MONGOSH_HOME/node_modules/.bin/mongosh ]] && return
  local started=$SECONDS
  say "installing mongosh $MONGOSH_VERSION from npm (first time only)"
  rm -rf "$MONGOSH_HOME.new"
  mkdir -p "$MONGOSH_HOME.new"
  npm install --no-audit --no-fund --silent --prefix "$MONGOSH_HOME.new" "mongosh@$MONGOSH_VERSION" \
    || die "npm install mongosh@$MONGOSH_VERSION failed (see above)"
  rm -rf "$MONGOSH_HOME" && mv "$MONGOSH_HOME.new" "$MONGOSH_HOME"
  note "mongosh installed in $((SECONDS - started))s"
}

# The Rust toolchain this machine builds with, as the rust stand-in's build context.
rust_toolchain_context() {
  local ctx=$1 sysroot
  sysroot=$(rustc --print sysroot) || die "the rust builder image copies the host's Rust toolchain: install rustup"
  mkdir -p "$ctx/toolchain"
  # Everything but the HTML documentation (~800 MB) the image has no use for.
  tar -C "$sysroot" --exclude=./share/doc -c . | tar -C "$ctx/toolchain" -x
  cp "$(command -v rustup)" "$ctx/rustup"
  # CAs the host trusts beyond Debian's bundle (e.g. an egress proxy's), one file each.
  mkdir -p "$ctx/host-ca"
  if [[ -r /etc/ssl/certs/ca-certificates.crt && -d /usr/share/ca-certificates ]]; then
    local known
    known=$(mktemp)
    find /usr/share/ca-certificates -name '*.crt' -exec cat {} + >"$known"
    awk -v dir="$ctx/host-ca" -v known="$known" '
      BEGIN { while ((getline line < known) > 0) if (line !~ /^-----/) seen[line] = 1 }
      /BEGIN CERTIFICATE/ { cert = ""; body = ""; inside = 1 }
      inside { cert = cert $0 "\n"; if ($0 !~ /^-----/) body = body $0 }
      /END CERTIFICATE/ {
        inside = 0; split(cert, l, "\n"); unknown = 0
        for (i in l) if (l[i] !~ /^-----/ && l[i] != "" && !(l[i] in seen)) unknown = 1
        if (unknown) { n++; f = sprintf("%s/host-%02d.crt", dir, n); printf "%s", cert > f; close(f) }
      }' /etc/ssl/certs/ca-certificates.crt
    rm -f "$known"
  fi
}

# standin_inputs NAME: what stand-in NAME is built from, beyond its directory (building the
# programs it needs first): the hash of these lines decides whether it is rebuilt.
standin_inputs() {
  case $1 in
    mongo)
      ensure_ferretdb
      ensure_mongosh
      sha256sum "$FERRETDB_BIN" "$(readlink -f "$(command -v node)")"
      echo "mongosh $MONGOSH_VERSION" ;;
    mailpit) ensure_mailpit; sha256sum "$MAILPIT_BIN" ;;
    jaeger)  ensure_jaeger; sha256sum "$JAEGER_BIN" ;;
    rust)    rustc -vV; rustup --version 2>/dev/null; sha256sum /etc/ssl/certs/ca-certificates.crt 2>/dev/null || true ;;
  esac
}

# standin_context NAME DIR: the build context of stand-in NAME (its directory plus the
# programs it is built from).
standin_context() {
  local name=$1 ctx=$2
  cp -R "$IMAGES_DIR/$name/." "$ctx/"
  case $name in
    mongo)
      cp "$FERRETDB_BIN" "$ctx/ferretdb"
      cp "$(readlink -f "$(command -v node)")" "$ctx/node"
      cp -R "$MONGOSH_HOME" "$ctx/mongosh" ;;
    mailpit) cp "$MAILPIT_BIN" "$ctx/mailpit" ;;
    jaeger)
      cp "$JAEGER_BIN" "$ctx/jaeger"
      cp "$(dirname "$JAEGER_BIN")/sampling-strategies.json" "$ctx/" ;;
    rust) rust_toolchain_context "$ctx" ;;
  esac
}

# build_standin NAME IMAGE [build args...]: (re)build when the image is missing or its inputs
# (its directory, the programs it contains, the base image, the build args) changed since it
# was built; their hash is kept in the image as a label.
build_standin() {
  local name=$1 image=$2
  shift 2
  local ctx hash have started=$SECONDS
  [[ -f $IMAGES_DIR/$name/Containerfile ]] || die "no stand-in '$name' in $IMAGES_DIR"
  hash=$( { (cd "$IMAGES_DIR/$name" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
            standin_inputs "$name"
            podman image inspect --format '{{.Id}}' "$BASE_IMAGE"
            printf '%s\n' "$@"; } | sha256sum | cut -c1-16)
  have=$(podman image inspect --format '{{index .Labels "shop.compose-test.inputs"}}' "$image" 2>/dev/null || true)
  if [[ $have == "$hash" ]]; then
    note "$image: up to date"
    return
  fi
  say "$image: building from deploy/podman/images/$name"
  ctx=$(mktemp -d "${TMPDIR:-/tmp}/shop-standin-$name.XXXXXX")
  CLEANUP+=("rm -rf '$ctx'")
  standin_context "$name" "$ctx"
  local -a args=()
  local a
  for a in "$@"; do args+=(--build-arg "$a"); done
  podman build --pull=never --layers --build-arg "BASE_IMAGE=$BASE_IMAGE" "${args[@]}" \
      --label "shop.compose-test.inputs=$hash" -t "$image" "$ctx" >"$LOG_DIR/build-$name.log" 2>&1 \
    || die "building $image failed. Last lines of $LOG_DIR/build-$name.log:
$(tail -n 25 "$LOG_DIR/build-$name.log")"
  rm -rf "$ctx"
  note "$image: built in $((SECONDS - started))s"
}

rust_image() {
  local release
  release=$(rustc -vV | sed -n 's/^release: //p')
  echo "$STANDIN/rust:$release-$DEBIAN_SUITE"
}

cmd_standins() {
  build_base
  build_standin postgres "$STANDIN/postgres:15"
  build_standin mongo "$STANDIN/mongo:ferretdb-${FERRETDB_VERSION#v}"
  build_standin redis "$STANDIN/redis:7"
  build_standin rabbitmq "$STANDIN/rabbitmq:3.10-management"
  build_standin mailpit "$STANDIN/mailpit:$MAILPIT_VERSION"
  build_standin jaeger "$STANDIN/jaeger:${JAEGER_VERSION#v}"
  build_standin prometheus "$STANDIN/prometheus:2.42"
  build_standin distroless "$RUNTIME_STANDIN"
  local rv host
  rv=$(rustc -vV | sed -n 's/^release: //p')
  host=$(rustc -vV | sed -n 's/^host: //p')
  build_standin rust "$(rust_image)" "TOOLCHAIN=$rv-$host"
}

# =============================================================================
# The service images, from the repository's Dockerfile through `docker compose build`
# =============================================================================
cmd_service_images() {
  local started=$SECONDS rust
  rust=$(rust_image)
  image_exists "$rust" || die "$rust is missing: run '$0 images' (it builds the stand-ins first)"
  image_exists "$RUNTIME_STANDIN" || die "$RUNTIME_STANDIN is missing: run '$0 images' (it builds the stand-ins first)"
  say "service images: docker compose build (deploy/docker/Dockerfile, RUST_IMAGE=$rust, RUNTIME_IMAGE=$RUNTIME_STANDIN)"
  # One build at a time: the first compiles the workspace once, the other targets reuse its
  # layers; seven parallel cargo builds would only thrash a small machine.
  # DOCKER_BUILDKIT=0: there is no buildx here; compose uses the engine's (podman's) builder.
  COMPOSE_PARALLEL_LIMIT=1 DOCKER_BUILDKIT=0 compose_base "$COMPOSE_FILE" build \
      --build-arg "RUST_IMAGE=$rust" --build-arg "RUNTIME_IMAGE=$RUNTIME_STANDIN" \
      >"$LOG_DIR/service-images.log" 2>&1 \
    || die "docker compose build failed. Last lines of $LOG_DIR/service-images.log:
$(tail -n 40 "$LOG_DIR/service-images.log")"
  note "service images built in $((SECONDS - started))s (log: $LOG_DIR/service-images.log)"
}

cmd_images() {
  start_api
  cmd_standins
  cmd_service_images
}

# =============================================================================
# docker compose
# =============================================================================
OVERRIDE=$SCRIPT_DIR/compose.override.yml
PORTS_OVERRIDE=$STATE_DIR/ports.override.yml
COMPOSE_FILE=${COMPOSE_TEST_FILE:-$REPO_ROOT/docker-compose.yml}
# Published ports move from 127.0.0.1 to this loopback address, so the compose stack and the
# native stack (deploy/local/stack.sh, on 127.0.0.1 with the same port numbers) never clash.
HOST_IP=${COMPOSE_TEST_HOST_IP:-127.0.0.2}
WAIT_TIMEOUT=${COMPOSE_TEST_WAIT_TIMEOUT:-600}

# compose_base FILE ARGS...: the compose file plus the image override; paths in the file are
# relative to the repository (so a copy of the file elsewhere behaves like the original).
compose_base() {
  local file=$1
  shift
  docker compose -p "$PROJECT" --project-directory "$REPO_ROOT" -f "$file" -f "$OVERRIDE" "$@"
}
compose() { compose_base "$COMPOSE_FILE" -f "$PORTS_OVERRIDE" "$@"; }

# Every published port of the compose file, re-published on HOST_IP (same port numbers).
write_ports_override() {
  local json
  json=$(compose_base "$COMPOSE_FILE" config --format json) || die "docker compose config failed (see above)"
  {
    echo "# Generated by deploy/podman/compose-test.sh from docker-compose.yml: every published"
    echo "# port on $HOST_IP instead of its host address, so the native stack can keep 127.0.0.1."
    echo "services:"
    jq -r --arg ip "$HOST_IP" '
      .services | to_entries[] | select((.value.ports // []) | length > 0)
      | "  \(.key):\n    ports: !override",
        (.value.ports[] | "      - \"\($ip):\(.published):\(.target)/\(.protocol // "tcp")\"")' <<<"$json"
  } >"$PORTS_OVERRIDE"
}

# The host port compose published for SERVICE's container port TARGET.
published_port() {
  compose_base "$COMPOSE_FILE" config --format json \
    | jq -r --arg s "$1" --argjson t "$2" '.services[$s].ports[] | select(.target == $t) | .published' | head -n1
}

# After a failed `up`: one line per service that is not running and healthy, with its state,
# health and exit code, then the last lines it logged.
report_unhealthy() {
  local rows svc state health code bad=()
  rows=$(compose ps -a --format json 2>/dev/null | jq -rs 'flatten[] | [.Service, .State, (.Health // ""), (.ExitCode // 0)] | @tsv') || true
  while IFS=$'\t' read -r svc state health code; do
    [[ -n $svc ]] || continue
    if [[ $state != running || ( -n $health && $health != healthy ) ]]; then
      bad+=("$svc")
      printf 'SERVICE %s: %s%s%s\n' "$svc" "$state" "${health:+, health $health}" \
        "$([[ $state == exited ]] && echo ", exit code $code")" >&2
    fi
  done <<<"$rows"
  for svc in "${bad[@]}"; do
    printf -- '--- last lines of %s ---\n' "$svc" >&2
    compose logs --no-color --tail 15 "$svc" 2>&1 | sed 's/^/    | /' >&2
  done
  if (( ${#bad[@]} )); then
    printf 'not healthy: %s\n' "${bad[*]}" >&2
    return 1
  fi
  return 0
}

# compose_up [SERVICE...]: start the API and the ticker, `up --wait`; on failure report which
# services are not healthy and return 1.
compose_up() {
  local started=$SECONDS
  start_api
  start_ticker
  write_ports_override
  say "docker compose up --wait ($(basename "$COMPOSE_FILE") + $(basename "$OVERRIDE"); ports on $HOST_IP)"
  if ! compose up --detach --wait --wait-timeout "$WAIT_TIMEOUT" --no-build "$@" >"$LOG_DIR/up.log" 2>&1; then
    tail -n 15 "$LOG_DIR/up.log" >&2
    report_unhealthy || true
    warn "docker compose up --wait failed after $((SECONDS - started))s (full log: $LOG_DIR/up.log)"
    return 1
  fi
  # Checked again by us: against podman, compose's --wait can return success while a container
  # crash-loops under its restart policy (the selftest's user-service, "Exited (2)" between
  # restarts, passed `up --wait` after its timeout on 2026-12-07).
  if ! report_unhealthy; then
    warn "docker compose up --wait returned success, but not every container is healthy ($((SECONDS - started))s)"
    return 1
  fi
  note "every service healthy after $((SECONDS - started))s"
  compose ps --format 'table {{.Service}}\t{{.Status}}' 2>/dev/null | sed 's/^/    /'
}

cmd_up() { compose_up "$@" || die "the compose stack did not come up healthy (services named above)"; }

cmd_down() {
  api_up || start_api
  say "docker compose down -v"
  [[ -f $PORTS_OVERRIDE ]] || write_ports_override
  compose down --volumes --remove-orphans --timeout 30 >"$LOG_DIR/down.log" 2>&1 \
    || warn "docker compose down failed (see $LOG_DIR/down.log)"
  podman network prune -f >/dev/null 2>&1 || true
}

# The end-to-end journeys (e2e/tests/journeys) against the gateway compose published.
run_journeys() {
  local gateway ops mail started=$SECONDS
  gateway=$(published_port gateway 8080)
  ops=$(published_port gateway 9080)
  mail=$(published_port mailpit 8025)
  say "e2e journeys against http://$HOST_IP:$gateway ${*:+(filter: $*)}"
  # The pipeline's statuses are read before anything else runs: the test run's own is the first.
  # (`... | grep || true` would leave PIPESTATUS to `true` whenever the pipeline failed.)
  local statuses
  set +e +o pipefail
  (cd "$REPO_ROOT" && E2E_BASE_URL="http://$HOST_IP:$gateway" E2E_OPS_URL="http://$HOST_IP:$ops" E2E_MAILPIT_URL="http://$HOST_IP:$mail" \
     cargo test -p e2e --locked --test journeys -- "$@") 2>&1 | tee "$LOG_DIR/e2e.log" | grep -E '^(test |test result|error|failures:|    [a-z_:]+$)'
  statuses=("${PIPESTATUS[@]}")
  set -e -o pipefail
  [[ ${statuses[0]} == 0 ]] || die "e2e journeys failed against the compose stack (log: $LOG_DIR/e2e.log)"
  note "journeys passed in $((SECONDS - started))s"
}

# One journey through every service that takes part in an order: for `make test`.
QUICK_JOURNEY=shopping::an_order_retried_with_its_idempotency_key_is_the_same_order_placed_and_charged_once

# A copy of the compose file with one variable broken (user-service's DATABASE_URL gets an
# unknown scheme) must make `up --wait` fail, and the failure must name the service.
cmd_selftest() {
  local dir=$STATE_DIR/selftest out rc=0 original=$COMPOSE_FILE
  mkdir -p "$dir"
  sed 's|DATABASE_URL: postgres://user_service:|DATABASE_URL: postgress://user_service:|' \
    "$original" >"$dir/docker-compose.yml"
  cmp -s "$original" "$dir/docker-compose.yml" \
    && die "selftest: could not break user-service's DATABASE_URL in a copy of $(basename "$original")"
  say "selftest: a copy of the compose file where user-service has DATABASE_URL=postgress://..."
  COMPOSE_FILE=$dir/docker-compose.yml
  out=$(WAIT_TIMEOUT=${COMPOSE_TEST_SELFTEST_TIMEOUT:-240} compose_up user-service 2>&1) || rc=$?
  cmd_down
  COMPOSE_FILE=$original
  (( rc != 0 )) || die "selftest: up --wait succeeded with a broken variable"
  if grep -q '^SERVICE user-service: ' <<<"$out" && grep -q 'DATABASE_URL' <<<"$out"; then
    note "selftest passed: the run failed, naming the service and the variable:"
    grep -E '^SERVICE user-service|DATABASE_URL' <<<"$out" | head -n 4 | sed 's/^/      /'
  else
    printf '%s\n' "$out" | tail -n 40 >&2
    die "selftest: the failure did not name user-service and DATABASE_URL (output above)"
  fi
}

# =============================================================================
# main
# =============================================================================
usage() {
  cat <<EOF
Usage: deploy/podman/compose-test.sh [command]

  all (default)  install, images, up, every e2e journey, down, selftest   (make compose-test)
  quick          install, images, up, one journey, down                  (for make test)
  install        Debian packages (podman, runc, debootstrap), the compose plugin
  images         base image, stand-in images, service images (docker compose build)
  up [SERVICE..] podman API + healthcheck ticker, docker compose up --wait
  e2e [FILTER]   the journeys against the running stack (E2E_BASE_URL)
  down           docker compose down -v, network prune, stop the API and the ticker
  selftest       a copy of the compose file with a broken variable must fail, naming the service
  env            the variables that point docker/podman at this setup, for use by hand

Environment: COMPOSE_TEST_HOST_IP ($HOST_IP: where ports are published),
COMPOSE_TEST_WAIT_TIMEOUT ($WAIT_TIMEOUT s), COMPOSE_TEST_PROJECT ($PROJECT).
Tools: $CACHE   State and logs: $STATE_DIR
EOF
}

cmd_env() {
  cat <<EOF
export CONTAINERS_CONF='$CONTAINERS_CONF'
export DOCKER_HOST='$DOCKER_HOST'
export DOCKER_CONFIG='$DOCKER_CONFIG'
# then e.g.: docker compose -p $PROJECT -f docker-compose.yml -f deploy/podman/compose.override.yml -f .local/compose/ports.override.yml ps
EOF
}

main() {
  local cmd=${1:-all} started=$SECONDS
  (( $# )) && shift
  case $cmd in help|-h|--help) usage; return ;; env) cmd_env; return ;; esac
  mkdir -p "$RUN_DIR" "$LOG_DIR"
  # One run at a time per checkout (the selftest's inner runs hold no lock: they are ours).
  if [[ -z ${COMPOSE_TEST_LOCKED:-} ]]; then
    exec 9>"$RUN_DIR/compose-test.lock"
    flock -n 9 || die "another compose-test.sh is running in this checkout (lock: $RUN_DIR/compose-test.lock)"
    export COMPOSE_TEST_LOCKED=1
  fi
  case $cmd in
    install)  cmd_install ;;
    base)     build_base ;;
    standins) cmd_standins ;;
    standin)  build_base; build_standin "$@" ;;
    images)
      cmd_install
      cmd_images
      # Leave the API as found: stop it if this run started it and no stack is up.
      if [[ -n $STARTED_API ]] && ! our_pid health-ticker >/dev/null; then stop_background; fi ;;
    up)       cmd_up "$@" ;;
    e2e)      run_journeys "$@" ;;
    down)     cmd_down; stop_background ;;
    selftest) CLEANUP+=("stop_background"); cmd_selftest ;;
    quick)
      # Whatever happens: the stack down, then the API and the ticker stopped (last in, first out).
      CLEANUP+=("stop_background" "cmd_down")
      cmd_install; cmd_images
      cmd_up
      run_journeys "$QUICK_JOURNEY" --exact ;;
    all)
      CLEANUP+=("stop_background" "cmd_down")
      cmd_install; cmd_images
      cmd_up
      run_journeys
      cmd_down
      cmd_selftest ;;
    *) usage >&2; die "unknown command: $cmd" ;;
  esac
  say "compose-test $cmd: done in $((SECONDS - started))s"
}

main "$@"; exit $?
