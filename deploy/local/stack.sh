#!/usr/bin/env bash
# =============================================================================
# deploy/local/stack.sh — run the whole shop natively, without Docker.
#
# This script is the "no containers" twin of a docker-compose file. It installs
# and runs, as plain processes on this machine:
#
#   infrastructure  PostgreSQL 15, Redis, RabbitMQ (+ management UI) and
#                   FerretDB (a MongoDB wire-protocol server on PostgreSQL),
#                   MailDev (a mail catcher: SMTP + web page + REST API),
#                   Jaeger (traces: an OTLP receiver the services export to,
#                   a query API and UI; spans kept in memory)
#   services        the seven Rust binaries of this repository
#
# Everything it creates lives in <repo>/.local/ (git-ignored):
#
#   .local/postgres/      PostgreSQL data directory (owned by the postgres user)
#   .local/redis/         Redis working directory
#   .local/rabbitmq/      RabbitMQ config, database, Erlang cookie, env.sh
#   .local/ferretdb/      FerretDB's state (its data is in PostgreSQL's ferretdb database)
#   .local/logs/<x>.log   one log file per process
#   .local/run/<x>.pid    pid of each process we started (+ <x>.start, its
#                         start time; + the PostgreSQL unix socket)
#   .local/test.env       connection URLs for the integration tests
#   .local/tls/           with STACK_GRPC_TLS=1: a development CA and a gRPC
#                         certificate + key per service (made once, by openssl)
#
# Ground rules the script follows (they are what makes it safe to re-run):
#   * idempotent: "up" twice leaves exactly one of everything running;
#   * it only ever stops processes whose pid it recorded itself, and it
#     double-checks a recorded pid still belongs to the process it started
#     (pids get reused after a reboot or a crash);
#   * every server listens on 127.0.0.1 only;
#   * if a port we need is taken by a process that is not ours, it stops with
#     a message naming the port and that process instead of guessing.
#
# Usage: deploy/local/stack.sh <command> [args]   (run with "help" for details)
# =============================================================================
set -euo pipefail

# -----------------------------------------------------------------------------
# Locations. The repository root is derived from this file's own path (with
# symlinks resolved), so the script works from any working directory.
# -----------------------------------------------------------------------------
SCRIPT_DIR="$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")"
REPO_ROOT="$(cd -- "$SCRIPT_DIR/../.." && pwd -P)"
STATE_DIR="$REPO_ROOT/.local"
RUN_DIR="$STATE_DIR/run"
LOG_DIR="$STATE_DIR/logs"

# Tools we build ourselves go to a per-user cache that survives `git clean`
# and fresh clones, so FerretDB is compiled once per machine, not per checkout.
TOOLS_BIN="${XDG_CACHE_HOME:-$HOME/.cache}/shop-stack/bin"
# Every service runs with glibc's mmap threshold fixed, as in the image, so a freed large
# buffer is given back (docs/adr/0014-malloc-mmap-threshold.md).
GLIBC_TUNABLES_FOR_SERVICES=glibc.malloc.mmap_threshold=131072

# --- PostgreSQL -------------------------------------------------------------
PG_BIN=/usr/lib/postgresql/15/bin
PG_DATA="$STATE_DIR/postgres"
PG_SOCKET_DIR="$RUN_DIR/postgres"   # unix socket dir (superuser access, no password)
PG_PORT=5432

# --- Redis ------------------------------------------------------------------
REDIS_DIR="$STATE_DIR/redis"
REDIS_PORT=6379
# Bounded memory, and what goes first when it is full. volatile-lru evicts only keys with an
# expiry: cached answers and rate-limit windows (both can be lost: a miss, a window restarting),
# never the gateway's cache generation and set of listings (no expiry), which invalidation needs
# to be correct; allkeys-lru could evict those and leave an old price cached. Same in
# docker-compose.yml and the Helm chart (services/gateway/src/cache.rs).
REDIS_MAXMEMORY=256mb
REDIS_MAXMEMORY_POLICY=volatile-lru

# --- RabbitMQ ---------------------------------------------------------------
# We call the scripts in /usr/lib/rabbitmq/bin directly. The /usr/sbin ones are
# Debian wrappers that switch to the "rabbitmq" system user and its HOME, which
# would point rabbitmqctl at the system node instead of ours.
RABBIT_BIN=/usr/lib/rabbitmq/bin
RABBIT_DIR="$STATE_DIR/rabbitmq"
RABBIT_ENV="$RABBIT_DIR/env.sh"     # sourced before every rabbitmq command
AMQP_PORT=5672
RABBIT_MGMT_PORT=15672
RABBIT_DIST_PORT=25672              # Erlang distribution (used by rabbitmqctl)
EPMD_PORT=4369                      # Erlang port mapper daemon
RABBIT_API="http://127.0.0.1:$RABBIT_MGMT_PORT/api"

# --- FerretDB (MongoDB protocol) --------------------------------------------
FERRETDB_MODULE=github.com/FerretDB/FerretDB
FERRETDB_VERSION=v1.24.2
FERRETDB_BIN="$TOOLS_BIN/ferretdb"
FERRETDB_DIR="$STATE_DIR/ferretdb"
MONGO_PORT=27017
FERRETDB_DEBUG_PORT=8088            # FerretDB's /debug/livez, /debug/metrics

# --- MailDev (mail catcher; notification-service) ----------------------------
# An SMTP server that keeps every mail and shows it in a web page, with a REST
# API the tests read (GET /email). Installed from npm into the tools cache,
# one directory per version (see install_maildev; why MailDev: ADR 0012).
MAILDEV_VERSION=2.2.1
MAILDEV_HOME="${XDG_CACHE_HOME:-$HOME/.cache}/shop-stack/maildev-$MAILDEV_VERSION"
MAILDEV_BIN="$MAILDEV_HOME/node_modules/.bin/maildev"
MAILDEV_DIR="$STATE_DIR/maildev"    # the caught mails (.eml files)
SMTP_PORT=1025
MAIL_WEB_PORT=1080

# --- Jaeger (traces; every service exports its spans here in development) ----
# v1's all-in-one: collector (OTLP over HTTP and gRPC), in-memory storage and
# the query service (HTTP API /api/traces + UI) in one process. It is the
# lightest Jaeger build with both OTLP ingest and a query API: v2's `jaeger`
# binary embeds an OpenTelemetry Collector distribution and is larger to build.
# Built from its Go module like FerretDB, cached per version (install_jaeger).
JAEGER_MODULE=github.com/jaegertracing/jaeger
JAEGER_VERSION=v1.76.0
JAEGER_BIN="$TOOLS_BIN/jaeger-all-in-one-$JAEGER_VERSION"
OTLP_HTTP_PORT=4318                 # the services' OTEL_EXPORTER_OTLP_ENDPOINT
OTLP_GRPC_PORT=4317
JAEGER_UI_PORT=16686                # UI and the HTTP query API (/api/traces)
JAEGER_QUERY_GRPC_PORT=16685
JAEGER_ADMIN_PORT=14269             # /  answers 200 once it serves (health check)
JAEGER_COLLECTOR_HTTP_PORT=14268    # its legacy Thrift/HTTP intake (unused, bound to loopback)
JAEGER_COLLECTOR_GRPC_PORT=14250    # its legacy gRPC intake (unused, bound to loopback)

# --- gRPC TLS between the services (optional: STACK_GRPC_TLS=1) ----------------
# Off by default: development gRPC is plaintext, as in compose and the tests. On,
# services-up makes (once) a development CA and a certificate per service for
# localhost/127.0.0.1 under .local/tls/, gives every service its certificate and
# the callers the CA and https:// URLs (docs/adr/0017-tls-between-services.md).
GRPC_TLS=${STACK_GRPC_TLS:-0}
TLS_DIR="$STATE_DIR/tls"
# How long to wait for things (seconds; the STACK_* variables override them).
INFRA_TIMEOUT=${STACK_INFRA_TIMEOUT:-120}            # per infrastructure server to come up
SERVICE_TIMEOUT=${STACK_SERVICE_TIMEOUT:-60}         # per service until /readyz says 200
SERVICE_STOP_TIMEOUT=${STACK_SERVICE_STOP_TIMEOUT:-30} # between TERM and KILL for services
INFRA_STOP_TIMEOUT=20                                # same for redis/ferretdb/rabbitmq/epmd

# Infrastructure components in start order (stopped in reverse order), and the
# TCP ports each one needs. epmd is RabbitMQ's little helper (see start_epmd).
INFRA=(postgres redis epmd rabbitmq ferretdb maildev jaeger)
declare -A INFRA_PORTS=(
  [postgres]="$PG_PORT"
  [redis]="$REDIS_PORT"
  [epmd]="$EPMD_PORT"
  [rabbitmq]="$AMQP_PORT $RABBIT_MGMT_PORT $RABBIT_DIST_PORT"
  [ferretdb]="$MONGO_PORT $FERRETDB_DEBUG_PORT"
  [maildev]="$SMTP_PORT $MAIL_WEB_PORT"
  [jaeger]="$OTLP_HTTP_PORT $OTLP_GRPC_PORT $JAEGER_UI_PORT $JAEGER_QUERY_GRPC_PORT $JAEGER_ADMIN_PORT $JAEGER_COLLECTOR_HTTP_PORT $JAEGER_COLLECTOR_GRPC_PORT"
)

# -----------------------------------------------------------------------------
# THE service table — the single place that says how each binary is started.
# Services start in this order, each one ready (its event consumers attached)
# before the next starts: a consumer's queue must exist before a producer's
# first events are published, or the broker has nowhere to route them. So
# inventory (consumes ProductCreated) starts before catalog, whose demo seed
# publishes them, and notification before the services whose events it mails.
# Columns: binary name, HTTP port, gRPC port, extra environment (KEY=VALUE
# words separated by spaces; values must not contain spaces). OPS_ADDR is the
# port of /healthz, /readyz and /metrics (HTTP port + 1000), as in compose and
# the chart: the API ports do not answer them.
#
# It is also the source of truth for provisioning: the PostgreSQL roles and
# databases and the RabbitMQ users created by `infra-up` are read from the
# DATABASE_URL / AMQP_URL columns below, so credentials can never drift apart.
# Passwords equal the user names: this is a local development stack only. The
# same holds for the service-client secrets (SERVICE_CLIENTS of user-service and
# each caller's SERVICE_SECRET). SHOP_ENV=development marks every service as
# running with such development values; production supplies its own secrets.
# -----------------------------------------------------------------------------
SERVICES_TABLE='
user-service          8081 50051 OPS_ADDR=127.0.0.1:9081 DATABASE_URL=postgres://user_service:user_service@127.0.0.1:5432/users AMQP_URL=amqp://user_service:user_service@127.0.0.1:5672/%2f SHOP_ENV=development SERVICE_CLIENTS=order-service=dev-only-order-service-secret-0000000000,notification-service=dev-only-notification-service-secret-00000
notification-service  8086 50056 OPS_ADDR=127.0.0.1:9086 MONGODB_URL=mongodb://127.0.0.1:27017/ MONGODB_DATABASE=notification AMQP_URL=amqp://notification_service:notification_service@127.0.0.1:5672/%2f SHOP_ENV=development SERVICE_SECRET=dev-only-notification-service-secret-00000
inventory-service     8083 50053 OPS_ADDR=127.0.0.1:9083 DATABASE_URL=postgres://inventory_service:inventory_service@127.0.0.1:5432/inventory AMQP_URL=amqp://inventory_service:inventory_service@127.0.0.1:5672/%2f SHOP_ENV=development
catalog-service       8082 50052 OPS_ADDR=127.0.0.1:9082 MONGODB_URL=mongodb://127.0.0.1:27017/ MONGODB_DATABASE=catalog AMQP_URL=amqp://catalog_service:catalog_service@127.0.0.1:5672/%2f SHOP_ENV=development CATALOG_SEED_DEMO=true
payment-service       8085 50055 OPS_ADDR=127.0.0.1:9085 DATABASE_URL=postgres://payment_service:payment_service@127.0.0.1:5432/payments AMQP_URL=amqp://payment_service:payment_service@127.0.0.1:5672/%2f SHOP_ENV=development
order-service         8084 50054 OPS_ADDR=127.0.0.1:9084 DATABASE_URL=postgres://order_service:order_service@127.0.0.1:5432/orders AMQP_URL=amqp://order_service:order_service@127.0.0.1:5672/%2f SHOP_ENV=development SERVICE_SECRET=dev-only-order-service-secret-0000000000
gateway               8080 50050 OPS_ADDR=127.0.0.1:9080 REDIS_URL=redis://127.0.0.1:6379 AMQP_URL=amqp://gateway:gateway@127.0.0.1:5672/%2f SHOP_ENV=development
'

# Extra PostgreSQL roles that are not tied to a service: "role database attrs".
#   testkit  — the integration tests log in as testkit and create (and drop) a
#              fresh database per test, hence CREATEDB CREATEROLE.
#   ferretdb — FerretDB's backend: each MongoDB database is a schema of its database.
EXTRA_PG_ROLES='
testkit   -        CREATEDB CREATEROLE
ferretdb  ferretdb
'

# =============================================================================
# Small helpers
# =============================================================================
say()  { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die()  { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# Commands that must run as root (apt-get, writing /etc/hosts) go through sudo
# when the script is run by a normal user.
as_root() {
  if (( EUID == 0 )); then "$@"; else sudo "$@"; fi
}

# PostgreSQL refuses to run as root. When we are root, the server and its
# tools run as the Debian "postgres" system user; otherwise as ourselves.
as_pg_owner() {
  if (( EUID == 0 )); then runuser -u postgres -- "$@"; else "$@"; fi
}

# Run a command with the RabbitMQ environment of our node (in a subshell, so
# HOME and friends do not leak into the rest of this script).
with_rabbit_env() {
  (
    # shellcheck source=/dev/null
    . "$RABBIT_ENV"
    "$@"
  )
}

# Lines of a table variable, minus blank lines and comments.
table_rows() { grep -Ev '^[[:space:]]*(#|$)' <<<"$1"; }

# Names of all services, in table order.
service_names() {
  local name _rest
  while read -r name _rest; do printf '%s\n' "$name"; done < <(table_rows "$SERVICES_TABLE")
}

# Cleanup actions queued by the code below, run when the script exits.
CLEANUP=()
run_cleanup() {
  local action
  for action in "${CLEANUP[@]}"; do eval "$action" || true; done
}
trap run_cleanup EXIT

# =============================================================================
# Process bookkeeping
#
# For every process we start we write two files:
#   .local/run/<name>.pid    the pid (plain number: `kill $(cat x.pid)` works)
#   .local/run/<name>.start  the process start time, from /proc/<pid>/stat
# A pid alone is not proof: after a crash or reboot the same number can belong
# to an unrelated process. The (pid, start time) pair is unique, so we only
# ever signal a process when both match.
# =============================================================================
pidfile()   { printf '%s/%s.pid' "$RUN_DIR" "$1"; }
startfile() { printf '%s/%s.start' "$RUN_DIR" "$1"; }

# Print field N (1-based, as in `man 5 proc`) of /proc/<pid>/stat. Field 2 is
# the command name in parentheses and may contain spaces, so we cut after the
# last ')' and count from field 3.
proc_stat_field() {
  local pid=$1 field=$2 stat rest
  local -a f
  { stat=$(<"/proc/$pid/stat"); } 2>/dev/null || return 1   # no such process
  rest=${stat##*) }
  read -ra f <<<"$rest"
  printf '%s\n' "${f[field - 3]}"
}

# Is <pid> a live process (zombies count as dead)?
pid_alive() {
  local state
  state=$(proc_stat_field "$1" 3 2>/dev/null) || return 1
  [[ $state != Z && $state != X ]]
}

# Record that component <name> runs as <pid>. If the process already died
# (a program that crashes instantly) the start time is unknown; running_pid
# then reports it as not running and the readiness wait shows its log.
record_pid() {
  local name=$1 pid=$2 start
  start=$(proc_stat_field "$pid" 22) || start=gone
  printf '%s\n' "$pid" >"$(pidfile "$name")"
  printf '%s\n' "$start" >"$(startfile "$name")"
}

forget_pid() { rm -f -- "$(pidfile "$1")" "$(startfile "$1")"; }

# Print the pid of component <name> if it is running AND is the very process
# we started; return 1 otherwise.
running_pid() {
  local name=$1 pid start
  [[ -f $(pidfile "$name") && -f $(startfile "$name") ]] || return 1
  pid=$(<"$(pidfile "$name")")
  start=$(<"$(startfile "$name")")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  pid_alive "$pid" || return 1
  [[ $(proc_stat_field "$pid" 22) == "$start" ]] || return 1
  printf '%s\n' "$pid"
}

# A pid file whose process is gone (crash, reboot, kill -9) is "stale": drop it.
clear_stale() {
  local name=$1
  if [[ -e $(pidfile "$name") ]] && ! running_pid "$name" >/dev/null; then
    note "$name: removing stale pid file (process $(<"$(pidfile "$name")") is gone or is no longer the one we started)"
    forget_pid "$name"
  fi
}

# launch <name> <workdir> <command...>
# Start a long-running command in the background, detached from this shell:
#   setsid  puts it in its own session and process group, so Ctrl-C in the
#           terminal does not reach it and we can later signal the whole group
#           (the process plus any helpers it forked) in one go;
#   nohup   makes it ignore SIGHUP when the terminal closes;
#   9>&-    closes the file descriptor holding our lock (see main) so the
#           daemon does not keep the lock forever.
# Output is appended to .local/logs/<name>.log. `exec` makes the pid of the
# subshell ($!) the pid of the final program (setsid only forks when it is
# already a process-group leader, which a background child of a script is not).
launch() {
  local name=$1 workdir=$2; shift 2
  local log="$LOG_DIR/$name.log" pid
  printf '\n----- %s: starting %s -----\n' "$(date '+%F %T')" "$name" >>"$log"
  ( cd "$workdir" && exec nohup setsid "$@" ) >>"$log" 2>&1 </dev/null 9>&- &
  pid=$!
  record_pid "$name" "$pid"
}

# Send <signal> to the process group led by <pid> if it leads one (everything
# started by launch does), else to the single process.
signal_tree() {
  local sig=$1 pid=$2
  if [[ $(proc_stat_field "$pid" 5 2>/dev/null) == "$pid" ]]; then
    kill "-$sig" -- "-$pid" 2>/dev/null || true
  else
    kill "-$sig" "$pid" 2>/dev/null || true
  fi
}

# The last 25 lines that <name> logged since it was last started (launch
# writes a "----- ...: starting <name> -----" marker), indented.
log_tail() {
  local log="$LOG_DIR/$1.log"
  [[ -f $log ]] || return 0
  awk '/^----- .*: starting / { n = 0; split("", l) }
       { l[n++] = $0 }
       END { for (i = (n > 25 ? n - 25 : 0); i < n; i++) print "    | " l[i] }' "$log"
}

# Wait up to <timeout> seconds for <pid> to exit.
wait_exit() {
  local pid=$1 timeout=$2 deadline=$((SECONDS + $2))
  while pid_alive "$pid"; do
    (( SECONDS < deadline )) || return 1
    sleep 0.2
  done
}

# stop_component <name> <timeout>: TERM what we started, KILL after <timeout>.
stop_component() {
  local name=$1 timeout=$2 pid
  if ! pid=$(running_pid "$name"); then
    clear_stale "$name"
    note "$name: not running"
    return 0
  fi
  note "$name: stopping pid $pid"
  signal_tree TERM "$pid"
  if ! wait_exit "$pid" "$timeout"; then
    warn "$name (pid $pid) did not exit within ${timeout}s; sending KILL"
    signal_tree KILL "$pid"
    wait_exit "$pid" 5 || warn "$name (pid $pid) survived KILL?!"
  fi
  forget_pid "$name"
}

# wait_until <name> <timeout> <command...>
# Poll <command> once a second until it succeeds. Returns 1 on timeout and
# 2 as soon as the component's process has died (no point in waiting longer).
wait_until() {
  local name=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    running_pid "$name" >/dev/null || return 2
    (( SECONDS < deadline )) || return 1
    sleep 1
  done
}

# Like wait_until, but for infrastructure: any failure is fatal and points at
# the log file.
wait_infra() {
  local name=$1 what=$2; shift 2
  local rc=0
  wait_until "$name" "$INFRA_TIMEOUT" "$@" || rc=$?
  case $rc in
    0) note "$name: ready ($what)" ;;
    1) die "$name did not become ready within ${INFRA_TIMEOUT}s ($what). Log: $LOG_DIR/$name.log" ;;
    *) die "$name exited during startup. Last lines of $LOG_DIR/$name.log:
$(log_tail "$name")" ;;
  esac
}

# -----------------------------------------------------------------------------
# Ports
# -----------------------------------------------------------------------------
# Does something accept TCP connections on 127.0.0.1:<port>? (bash's /dev/tcp)
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Describe whoever listens on <port> (on any address), or print nothing.
port_holder() {
  local port=$1 out
  if command -v ss >/dev/null 2>&1; then
    out=$(ss -Hltnp "sport = :$port" 2>/dev/null) || true
    [[ -n $out ]] || return 0
    if [[ $out =~ users:\(\(\"([^\"]+)\",pid=([0-9]+) ]]; then
      printf '%s (pid %s)\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
    else
      printf 'an unknown process\n'
    fi
  elif port_open "$port"; then
    printf 'an unknown process (install iproute2 for details)\n'
  fi
}

# Fail if a port needed by <component> is taken. Only called for components
# that are NOT running under our control, so any listener is a stranger.
ensure_ports_free() {
  local component=$1 port holder
  shift
  for port in "$@"; do
    holder=$(port_holder "$port")
    [[ -z $holder ]] && continue
    die "port $port (needed by $component) is already in use by $holder, which was not started by this script.
       If it is a Debian system service, stop it first, e.g.:  service postgresql stop / service redis-server stop / service rabbitmq-server stop
       (check with: ss -ltnp 'sport = :$port')"
  done
}

# For install: every infrastructure component that is not ours-and-running
# must find its ports free.
preflight_ports() {
  local c
  for c in "${INFRA[@]}"; do
    running_pid "$c" >/dev/null && continue
    # epmd is a shared, harmless name registry: an existing one is reused.
    [[ $c == epmd ]] && continue
    # A PostgreSQL serving OUR data directory is ours (launch_postgres adopts it).
    [[ $c == postgres ]] && pg_serves_our_data && continue
    # shellcheck disable=SC2086  # INFRA_PORTS values are space-separated lists
    ensure_ports_free "$c" ${INFRA_PORTS[$c]}
  done
}

# =============================================================================
# install
# =============================================================================
POLICY_RC=/usr/sbin/policy-rc.d
POLICY_MARKER="written by shop-stack deploy/local/stack.sh"

# Debian package scripts start freshly installed daemons through invoke-rc.d.
# Those system daemons would grab the very ports we need. invoke-rc.d first
# asks /usr/sbin/policy-rc.d; exit code 101 means "action forbidden". So we
# put such a file in place for the duration of apt-get and remove it after.
apt_install() {
  local pkgs=("$@")
  local wrote_policy=0
  if [[ ! -e $POLICY_RC ]] || grep -qF "$POLICY_MARKER" "$POLICY_RC" 2>/dev/null; then
    printf '#!/bin/sh\n# %s: forbid service starts during apt-get\nexit 101\n' "$POLICY_MARKER" \
      | as_root tee "$POLICY_RC" >/dev/null
    as_root chmod 0755 "$POLICY_RC"
    wrote_policy=1
    CLEANUP+=("as_root rm -f '$POLICY_RC'")
  else
    note "keeping the existing $POLICY_RC (not ours)"
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q 9>&-
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" 9>&-
  if (( wrote_policy )); then as_root rm -f "$POLICY_RC"; fi
}

# The Go toolchain, or a message saying how to get one.
go_toolchain() {
  local go
  go=$(command -v go || true)
  [[ -n $go ]] || { [[ -x /usr/local/go/bin/go ]] && go=/usr/local/go/bin/go; } \
    || die "FerretDB and Jaeger are built from source and need the Go toolchain: Go >= 1.24, or any
       Go >= 1.21, which downloads the newer toolchain by itself. See https://go.dev/dl/"
  printf '%s\n' "$go"
}

ferretdb_installed() {
  local out
  [[ -x $FERRETDB_BIN ]] || return 1
  out=$("$FERRETDB_BIN" --version 2>/dev/null) || return 1
  [[ $out == *"version: $FERRETDB_VERSION"* ]]
}

# FerretDB is built from source with the Go toolchain. Two wrinkles explain
# why this is not a plain `go install ...@v1.24.2`:
#  1. FerretDB embeds build/version/version.txt, a file generated by its own
#     build tooling and absent from the published Go module, so a plain
#     `go install` produces a binary that panics at start-up. We therefore copy
#     the module source to a temp dir, write version.txt, and `go build` there.
#  2. Building inside the module (instead of `go install pkg@version`) also
#     avoids the proxy's version *list* query, which some corporate / sandboxed
#     Go proxies refuse.
install_ferretdb() {
  if ferretdb_installed; then
    note "ferretdb $FERRETDB_VERSION already built: $FERRETDB_BIN"
    return 0
  fi
  local go started=$SECONDS tmp src
  go=$(go_toolchain)
  say "building FerretDB $FERRETDB_VERSION with $("$go" env GOVERSION) (first time only, ~1-3 min)"
  mkdir -p "$TOOLS_BIN"
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/shop-stack-ferretdb.XXXXXX")
  CLEANUP+=("rm -rf '$tmp'")
  # `go mod download` fetches the module into the module cache and tells us where.
  src=$(cd "$tmp" && GOWORK=off GOFLAGS='' "$go" mod download -json "$FERRETDB_MODULE@$FERRETDB_VERSION" \
        | jq -r '.Dir // empty') || die "could not download $FERRETDB_MODULE@$FERRETDB_VERSION (see above)"
  [[ -n $src && -d $src ]] || die "could not download $FERRETDB_MODULE@$FERRETDB_VERSION"
  cp -R "$src" "$tmp/src"
  chmod -R u+w "$tmp/src"          # the module cache is read-only
  printf '%s\n' "$FERRETDB_VERSION" >"$tmp/src/build/version/version.txt"
  printf 'shop-stack\n' >"$tmp/src/build/version/package.txt"
  (cd "$tmp/src" && GOWORK=off GOFLAGS='' "$go" build -buildvcs=false -trimpath \
     -o "$FERRETDB_BIN.new" ./cmd/ferretdb) 9>&-
  mv -f "$FERRETDB_BIN.new" "$FERRETDB_BIN"
  ferretdb_installed || die "built $FERRETDB_BIN but '--version' does not report $FERRETDB_VERSION"
  note "ferretdb built in $((SECONDS - started))s"
}

# Jaeger is built like FerretDB: `go mod download` the module, then `go build`
# inside it. Its go.mod has a `replace` directive, which `go install pkg@version`
# refuses. The module cache is read-only, which `go build -o elsewhere` does
# not mind. The binary's name carries the version, so a version bump builds anew.
install_jaeger() {
  if [[ -x $JAEGER_BIN ]]; then
    note "jaeger $JAEGER_VERSION already built: $JAEGER_BIN"
    return 0
  fi
  local go started=$SECONDS tmp src
  go=$(go_toolchain)
  say "building Jaeger all-in-one $JAEGER_VERSION with $("$go" env GOVERSION) (first time only, a few minutes)"
  mkdir -p "$TOOLS_BIN"
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/shop-stack-jaeger.XXXXXX")
  CLEANUP+=("rm -rf '$tmp'")
  src=$(cd "$tmp" && GOWORK=off GOFLAGS='' "$go" mod download -json "$JAEGER_MODULE@$JAEGER_VERSION" \
        | jq -r '.Dir // empty') || die "could not download $JAEGER_MODULE@$JAEGER_VERSION (see above)"
  [[ -n $src && -d $src ]] || die "could not download $JAEGER_MODULE@$JAEGER_VERSION"
  (cd "$src" && GOWORK=off GOFLAGS='' CGO_ENABLED=0 "$go" build -buildvcs=false -trimpath \
     -ldflags='-s -w' -o "$JAEGER_BIN.new" ./cmd/all-in-one) 9>&-
  mv -f "$JAEGER_BIN.new" "$JAEGER_BIN"
  note "jaeger built in $((SECONDS - started))s"
}

# Erlang (RabbitMQ) names our node rabbit@localhost, so "localhost" must
# resolve to an IPv4 address.
ensure_localhost() {
  if ! getent ahostsv4 localhost >/dev/null 2>&1; then
    say "'localhost' does not resolve; adding it to /etc/hosts"
    printf '127.0.0.1\tlocalhost\n' | as_root tee -a /etc/hosts >/dev/null
  fi
}

cmd_install() {
  local -a missing=()
  local started=$SECONDS
  [[ -x $PG_BIN/postgres && -x $PG_BIN/initdb && -x $PG_BIN/pg_ctl ]] || missing+=(postgresql)
  command -v psql >/dev/null 2>&1 && command -v pg_isready >/dev/null 2>&1 || missing+=(postgresql-client)
  command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || missing+=(redis-server redis-tools)
  [[ -x $RABBIT_BIN/rabbitmq-server && -x $RABBIT_BIN/rabbitmqctl ]] || missing+=(rabbitmq-server)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v jq >/dev/null 2>&1 || missing+=(jq)
  command -v ss >/dev/null 2>&1 || missing+=(iproute2)
  command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)   # MailDev

  if (( ${#missing[@]} )); then
    say "installing Debian packages: ${missing[*]}"
    apt_install "${missing[@]}"
    note "apt-get finished in $((SECONDS - started))s"
  else
    note "Debian packages already installed"
  fi
  [[ -x $PG_BIN/postgres ]] || die "$PG_BIN/postgres not found: this script expects PostgreSQL 15 (Debian 12 'bookworm')"
  install_ferretdb
  install_maildev
  install_jaeger
  ensure_localhost
  preflight_ports
}

# =============================================================================
# PostgreSQL
# =============================================================================
# Our settings live in shop-stack.conf, which postgresql.conf includes (a
# line appended right after initdb, see below); pg_hba.conf is entirely ours.
# Both are rewritten on every start, so this script stays the single source
# of truth.
write_pg_config() {
  cat >"$PG_DATA/shop-stack.conf" <<EOF
# Generated by deploy/local/stack.sh on every infra-up: edit the script, not this file.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCKET_DIR'
unix_socket_permissions = 0777
max_connections = 400           # every test creates its own pool
shared_buffers = 256MB
password_encryption = 'scram-sha-256'
# fsync / synchronous_commit deliberately keep their (durable) defaults.
EOF
  # Who may connect how. First matching line wins.
  cat >"$PG_DATA/pg_hba.conf" <<'EOF'
# Generated by deploy/local/stack.sh on every infra-up: edit the script, not this file.
# TYPE  DATABASE  USER      ADDRESS        METHOD
local   all       postgres                 trust          # superuser via the unix socket in .local/run/postgres
local   all       all                      scram-sha-256
host    all       all       127.0.0.1/32   scram-sha-256  # everyone else: TCP + password
EOF
  if (( EUID == 0 )); then chown postgres:postgres "$PG_DATA/shop-stack.conf" "$PG_DATA/pg_hba.conf"; fi
}

# Is a server running on .local/postgres? (pg_ctl reads postmaster.pid there.)
pg_serves_our_data() {
  [[ -f $PG_DATA/postmaster.pid ]] && as_pg_owner "$PG_BIN/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1
}

# psql as the superuser over the unix socket (trusted, no password), in database $1
# (default postgres), reading SQL from stdin.
pg_admin() {
  "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCKET_DIR" -p "$PG_PORT" -U postgres -d "${1:-postgres}"
}

# Create (or update) roles and databases. Safe to run any number of times:
# roles are created if missing and their password is (re)set; databases are
# created if missing and their owner is (re)set.
provision_postgres() {
  local sql="" url role pass db attrs name _h _g rest entry
  local -a roles=() dbs=()

  # role|password|database|attributes, from the service table and EXTRA_PG_ROLES.
  while read -r name _h _g rest; do
    for url in $rest; do
      [[ $url =~ ^DATABASE_URL=postgres://([^:]+):([^@]+)@[^/]+/(.+)$ ]] || continue
      roles+=("${BASH_REMATCH[1]}|${BASH_REMATCH[2]}|${BASH_REMATCH[3]}|")
    done
  done < <(table_rows "$SERVICES_TABLE")
  while read -r role db attrs; do
    roles+=("$role|$role|$db|$attrs")
  done < <(table_rows "$EXTRA_PG_ROLES")

  for entry in "${roles[@]}"; do
    IFS='|' read -r role pass db attrs <<<"$entry"
    sql+="
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$role') THEN CREATE ROLE \"$role\"; END IF;
END \$\$;
ALTER ROLE \"$role\" WITH LOGIN PASSWORD '$pass' $attrs;"
    if [[ $db != - ]]; then
      dbs+=("$db")
      # CREATE DATABASE cannot run inside DO/transactions; \gexec runs the
      # generated statement only when the SELECT returns a row.
      sql+="
SELECT format('CREATE DATABASE %I OWNER %I', '$db', '$role')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$db') \\gexec
ALTER DATABASE \"$db\" OWNER TO \"$role\";"
    fi
  done
  pg_admin <<<"$sql"
  note "postgres: roles ${#roles[@]}, databases: ${dbs[*]}"
  # FerretDB's tables get the `_id` index MongoDB has (ADR 0018).
  pg_admin ferretdb <"$SCRIPT_DIR/ferretdb-id-index.sql" >/dev/null
  note "postgres: ferretdb's tables indexed by _id (deploy/local/ferretdb-id-index.sql)"
}

# Start PostgreSQL unless it already runs; then (always) wait for it and
# provision roles/databases, so a changed service table takes effect on the
# next infra-up without a restart.
start_postgres() {
  local pid
  if pid=$(running_pid postgres); then
    note "postgres: already running (pid $pid)"
  else
    launch_postgres
  fi
  wait_infra postgres "pg_isready 127.0.0.1:$PG_PORT" "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"
  provision_postgres
}

launch_postgres() {
  clear_stale postgres

  mkdir -p "$PG_DATA" "$PG_SOCKET_DIR"
  touch "$LOG_DIR/postgres.log"
  if (( EUID == 0 )); then
    chown postgres:postgres "$PG_DATA" "$PG_SOCKET_DIR" "$LOG_DIR/postgres.log"
    as_pg_owner test -w "$PG_DATA" || die "the 'postgres' OS user cannot write $PG_DATA.
       A parent directory of the checkout is probably not searchable by other users
       (e.g. a repo under /root, which is mode 700). Move the checkout or 'chmod o+x' its parents."
  fi
  chmod 0700 "$PG_DATA"
  chmod 0755 "$PG_SOCKET_DIR"
  # Unix socket paths are limited to 107 bytes.
  (( ${#PG_SOCKET_DIR} + 15 <= 107 )) || die "checkout path too long for a unix socket: $PG_SOCKET_DIR"

  if [[ ! -f $PG_DATA/PG_VERSION ]]; then
    say "postgres: creating a new cluster in $PG_DATA"
    as_pg_owner "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --encoding=UTF8 --no-locale \
      --auth-local=trust --auth-host=scram-sha-256 >>"$LOG_DIR/postgres.log" 2>&1 9>&- \
      || die "initdb failed, see $LOG_DIR/postgres.log"
    printf "\ninclude_if_exists = 'shop-stack.conf'\n" | as_pg_owner tee -a "$PG_DATA/postgresql.conf" >/dev/null
  fi
  write_pg_config

  # Our pid file is gone but our data directory is in use (e.g. someone
  # deleted .local/run): the server is ours, so adopt it instead of failing.
  if pg_serves_our_data; then
    record_pid postgres "$(head -n1 "$PG_DATA/postmaster.pid")"
    note "postgres: adopted the server already running on $PG_DATA"
  else
    ensure_ports_free postgres "$PG_PORT"
    say "postgres: starting on 127.0.0.1:$PG_PORT"
    # pg_ctl daemonizes the server itself; -w waits until it accepts connections.
    as_pg_owner "$PG_BIN/pg_ctl" start -D "$PG_DATA" -l "$LOG_DIR/postgres.log" -w -t "$INFRA_TIMEOUT" \
      >/dev/null 9>&- || die "postgres failed to start. Last lines of $LOG_DIR/postgres.log:
$(log_tail postgres)"
    record_pid postgres "$(head -n1 "$PG_DATA/postmaster.pid")"
  fi
}

stop_postgres() {
  local pid
  if ! pid=$(running_pid postgres); then clear_stale postgres; note "postgres: not running"; return 0; fi
  note "postgres: stopping pid $pid (pg_ctl stop -m fast)"
  as_pg_owner "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w -t 60 >/dev/null 9>&- \
    || stop_component postgres "$INFRA_STOP_TIMEOUT"
  forget_pid postgres
}

# =============================================================================
# Redis
# =============================================================================
start_redis() {
  local pid
  if pid=$(running_pid redis); then
    note "redis: already running (pid $pid)"
  else
    clear_stale redis
    ensure_ports_free redis "$REDIS_PORT"
    mkdir -p "$REDIS_DIR"
    say "redis: starting on 127.0.0.1:$REDIS_PORT"
    # No persistence (--save "" and no AOF): this is a cache for development.
    # --logfile '' = log to stdout, which launch sends to .local/logs/redis.log.
    launch redis "$REDIS_DIR" redis-server \
      --port "$REDIS_PORT" --bind 127.0.0.1 --protected-mode yes \
      --maxmemory "$REDIS_MAXMEMORY" --maxmemory-policy "$REDIS_MAXMEMORY_POLICY" \
      --dir "$REDIS_DIR" --save '' --appendonly no --daemonize no --logfile ''
  fi
  wait_infra redis "redis-cli ping" redis_ping
}
redis_ping() { [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }

# =============================================================================
# RabbitMQ
# =============================================================================
# Every setting of our node, as environment variables RabbitMQ's scripts and
# rabbitmqctl understand. Written to .local/rabbitmq/env.sh so you can use it
# by hand too (in a subshell — it changes HOME!):
#   ( . .local/rabbitmq/env.sh && rabbitmqctl list_queues )
# or simply:  deploy/local/stack.sh rabbitmqctl list_queues
write_rabbit_files() {
  mkdir -p "$RABBIT_DIR/home" "$RABBIT_DIR/mnesia" "$RABBIT_DIR/log"
  chmod 0700 "$RABBIT_DIR/home"
  cat >"$RABBIT_ENV" <<EOF
# Generated by deploy/local/stack.sh. Source in a subshell: it changes HOME.
export RABBITMQ_NODENAME=rabbit@localhost
export RABBITMQ_CONF_ENV_FILE='$RABBIT_DIR/rabbitmq-env.conf'
export RABBITMQ_CONFIG_FILE='$RABBIT_DIR/rabbitmq.conf'
export RABBITMQ_ADVANCED_CONFIG_FILE='$RABBIT_DIR/advanced.config'
export RABBITMQ_ENABLED_PLUGINS_FILE='$RABBIT_DIR/enabled_plugins'
export RABBITMQ_MNESIA_BASE='$RABBIT_DIR/mnesia'
export RABBITMQ_LOG_BASE='$RABBIT_DIR/log'
export RABBITMQ_PID_FILE='$RABBIT_DIR/rabbitmq.pid'
# Main log to stdout, which stack.sh sends to .local/logs/rabbitmq.log.
export RABBITMQ_LOGS=-
export RABBITMQ_DIST_PORT=$RABBIT_DIST_PORT
# Erlang's own ports (epmd and node-to-node distribution) on loopback only.
export ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
export RABBITMQ_CTL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
export ERL_CRASH_DUMP='$LOG_DIR/rabbitmq-erl_crash.dump'
# The Erlang cookie (shared secret between the node and rabbitmqctl) is read
# from \$HOME/.erlang.cookie, so server and CLI share this private HOME.
export HOME='$RABBIT_DIR/home'
export PATH='$RABBIT_BIN':"\$PATH"
EOF
  # Keeps RabbitMQ from reading the system-wide /etc/rabbitmq/rabbitmq-env.conf.
  : >"$RABBIT_DIR/rabbitmq-env.conf"
  cat >"$RABBIT_DIR/rabbitmq.conf" <<EOF
# Generated by deploy/local/stack.sh on every infra-up: edit the script, not this file.
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $RABBIT_MGMT_PORT
# guest/guest is created on first boot as an administrator and may only log
# in from loopback (the default, spelled out here). The tests rely on it.
loopback_users.guest = true
EOF
  # Plugins enabled "offline": rabbitmq-plugins is not needed.
  printf '[rabbitmq_management].\n' >"$RABBIT_DIR/enabled_plugins"
  if [[ ! -s $RABBIT_DIR/home/.erlang.cookie ]]; then
    (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RABBIT_DIR/home/.erlang.cookie")
  fi
  chmod 0400 "$RABBIT_DIR/home/.erlang.cookie"
}

# Erlang nodes find each other through epmd (port 4369). The first Erlang
# program would start one on its own, as an untracked daemon listening on all
# interfaces; we start it ourselves instead, on loopback, with a pid file.
start_epmd() {
  local pid epmd
  if pid=$(running_pid epmd); then note "epmd: already running (pid $pid)"; return 0; fi
  clear_stale epmd
  if [[ -n $(port_holder "$EPMD_PORT") ]]; then
    note "epmd: reusing the existing epmd on port $EPMD_PORT ($(port_holder "$EPMD_PORT"); not ours, left alone)"
    return 0
  fi
  epmd=$(command -v epmd || true)
  [[ -n $epmd ]] || epmd=$(find /usr/lib/erlang -name epmd -type f -perm -u+x -print -quit 2>/dev/null)
  [[ -n $epmd ]] || die "epmd not found (is erlang-base installed?)"
  launch epmd "$RABBIT_DIR" "$epmd" -address 127.0.0.1 -port "$EPMD_PORT"
  # `epmd -names` asks the running daemon for its registered nodes.
  wait_infra epmd "epmd -names" "$epmd" -port "$EPMD_PORT" -names
}

rabbit_api_up() { curl -fsS -o /dev/null --max-time 3 -u guest:guest "$RABBIT_API/overview"; }

# PUT a JSON document to the management API (PUT is create-or-update, which
# makes provisioning idempotent and much faster than one rabbitmqctl per call).
rabbit_put() {
  curl -fsS --max-time 10 -u guest:guest -X PUT -H 'content-type: application/json' \
    --data "$2" "$RABBIT_API$1" >/dev/null || die "RabbitMQ API call PUT $1 failed"
}

provision_rabbitmq() {
  local name _h _g rest word user pass
  local -a users=()
  # Re-assert guest as administrator (it is by default; the tests need it).
  rabbit_put /users/guest '{"password":"guest","tags":"administrator"}'
  rabbit_put /permissions/%2F/guest '{"configure":".*","write":".*","read":".*"}'
  # One user per service, taken from the AMQP_URL column of the service table.
  while read -r name _h _g rest; do
    for word in $rest; do
      [[ $word =~ ^AMQP_URL=amqp://([^:]+):([^@]+)@ ]] || continue
      user=${BASH_REMATCH[1]} pass=${BASH_REMATCH[2]}
      rabbit_put "/users/$user" "$(jq -cn --arg p "$pass" '{password: $p, tags: ""}')"
      rabbit_put "/permissions/%2F/$user" '{"configure":".*","write":".*","read":".*"}'
      users+=("$user")
    done
  done < <(table_rows "$SERVICES_TABLE")
  note "rabbitmq: users ${users[*]}"
}

start_rabbitmq() {
  local pid
  write_rabbit_files
  if pid=$(running_pid rabbitmq); then
    note "rabbitmq: already running (pid $pid)"
  else
    clear_stale rabbitmq
    ensure_ports_free rabbitmq "$AMQP_PORT" "$RABBIT_MGMT_PORT" "$RABBIT_DIST_PORT"
    start_epmd
    say "rabbitmq: starting (AMQP 127.0.0.1:$AMQP_PORT, management http://127.0.0.1:$RABBIT_MGMT_PORT)"
    rm -f "$RABBIT_DIR/rabbitmq.pid"
    # rabbitmq-server is a shell script that starts the Erlang VM (beam.smp)
    # as its child and waits for it. We record the script's pid first ...
    with_rabbit_env launch rabbitmq "$RABBIT_DIR" "$RABBIT_BIN/rabbitmq-server"
  fi
  # First boot takes ~10-30s (it creates its database and expands plugins).
  wait_infra rabbitmq "management API $RABBIT_API/overview" rabbit_api_up
  wait_infra rabbitmq "AMQP 127.0.0.1:$AMQP_PORT" port_open "$AMQP_PORT"
  adopt_rabbit_vm
  provision_rabbitmq
}

# ... and once the node is up we record the VM itself instead (its pid is in
# RABBITMQ_PID_FILE), because that is the process holding the ports: if the
# wrapper script were killed, the VM would live on. We only switch if the VM
# is the child of the script we started.
adopt_rabbit_vm() {
  local wrapper vm
  wrapper=$(running_pid rabbitmq) || return 0
  [[ -s $RABBIT_DIR/rabbitmq.pid ]] || return 0
  vm=$(<"$RABBIT_DIR/rabbitmq.pid")
  [[ $vm =~ ^[0-9]+$ && $vm != "$wrapper" ]] || return 0
  if [[ $(proc_stat_field "$vm" 4 2>/dev/null) == "$wrapper" ]]; then
    record_pid rabbitmq "$vm"
  fi
}

stop_rabbitmq() {
  local pid
  if ! pid=$(running_pid rabbitmq); then clear_stale rabbitmq; note "rabbitmq: not running"; return 0; fi
  note "rabbitmq: stopping pid $pid (rabbitmqctl stop)"
  # `rabbitmqctl stop <pidfile>` asks the node to shut down cleanly and returns
  # once the Erlang VM has exited; the wrapper script follows right after.
  if [[ -s $RABBIT_DIR/rabbitmq.pid ]]; then
    with_rabbit_env "$RABBIT_BIN/rabbitmqctl" --quiet stop "$RABBIT_DIR/rabbitmq.pid" >/dev/null 2>&1 9>&- \
      || warn "rabbitmqctl stop failed; falling back to signals"
  fi
  # If that did not work, TERM (also a clean shutdown for the VM), then KILL.
  if wait_exit "$pid" "$INFRA_STOP_TIMEOUT"; then
    forget_pid rabbitmq
  else
    stop_component rabbitmq "$INFRA_STOP_TIMEOUT"
  fi
}

# =============================================================================
# FerretDB
# =============================================================================
ferretdb_live() { curl -fsS -o /dev/null --max-time 3 "http://127.0.0.1:$FERRETDB_DEBUG_PORT/debug/livez" && port_open "$MONGO_PORT"; }

start_ferretdb() {
  local pid
  if pid=$(running_pid ferretdb); then
    note "ferretdb: already running (pid $pid)"
  else
    clear_stale ferretdb
    ensure_ports_free ferretdb "$MONGO_PORT" "$FERRETDB_DEBUG_PORT"
    mkdir -p "$FERRETDB_DIR"
    say "ferretdb: starting on 127.0.0.1:$MONGO_PORT (PostgreSQL backend, database ferretdb)"
    # v1 flags (see `ferretdb --help`). No auth; each MongoDB database is one schema of
    # PostgreSQL's `ferretdb` database (role and database made with the others, above).
    # Why PostgreSQL and not v1's SQLite backend: on SQLite even an `{_id: ...}` lookup reads
    # the whole collection — FerretDB queries `_ferretdb_sjson->'$._id'` while its unique
    # index is on `_ferretdb_sjson->"_id"`, and SQLite uses an expression index only for the
    # same expression (`EXPLAIN QUERY PLAN` says SCAN) — so the cost of every read grew with
    # what was stored. On PostgreSQL the `_id` lookup and equality filters use the indexes
    # (bench/findings.md, "Scenario 7"). FerretDB's own state.json stays in FERRETDB_DIR.
    # The debug listener serves /debug/livez (used below) and /debug/metrics;
    # --debug-addr=- would switch it off.
    launch ferretdb "$FERRETDB_DIR" "$FERRETDB_BIN" \
      --listen-addr="127.0.0.1:$MONGO_PORT" \
      --handler=postgresql \
      --postgresql-url="postgres://ferretdb:ferretdb@127.0.0.1:$PG_PORT/ferretdb" \
      --state-dir="$FERRETDB_DIR" \
      --debug-addr="127.0.0.1:$FERRETDB_DEBUG_PORT" \
      --telemetry=disable --log-level=info
  fi
  wait_infra ferretdb "tcp 127.0.0.1:$MONGO_PORT + /debug/livez" ferretdb_live
}

# =============================================================================
# MailDev — the mail catcher (notification-service sends here; tests read its API)
# =============================================================================
maildev_installed() { [[ -x $MAILDEV_BIN ]]; }

# npm installs the pinned version into its own directory in the tools cache:
# idempotent (an existing directory is kept), and a version change installs
# beside the old one instead of on top of it.
install_maildev() {
  if maildev_installed; then note "maildev $MAILDEV_VERSION already installed: $MAILDEV_HOME"; return 0; fi
  say "installing MailDev $MAILDEV_VERSION from npm (first time only)"
  mkdir -p "$MAILDEV_HOME.new"
  npm install --no-audit --no-fund --silent --prefix "$MAILDEV_HOME.new" "maildev@$MAILDEV_VERSION" 9>&- \
    || die "npm install maildev@$MAILDEV_VERSION failed (see above)"
  rm -rf "$MAILDEV_HOME" && mv "$MAILDEV_HOME.new" "$MAILDEV_HOME"
  maildev_installed || die "installed MailDev but $MAILDEV_BIN is missing"
}

maildev_up() { curl -fsS -o /dev/null --max-time 3 "http://127.0.0.1:$MAIL_WEB_PORT/healthz" && port_open "$SMTP_PORT"; }

start_maildev() {
  local pid
  if pid=$(running_pid maildev); then
    note "maildev: already running (pid $pid)"
  else
    clear_stale maildev
    ensure_ports_free maildev "$SMTP_PORT" "$MAIL_WEB_PORT"
    mkdir -p "$MAILDEV_DIR"
    say "maildev: starting (SMTP 127.0.0.1:$SMTP_PORT, mail web page http://127.0.0.1:$MAIL_WEB_PORT)"
    launch maildev "$MAILDEV_DIR" "$MAILDEV_BIN" --ip 127.0.0.1 --web-ip 127.0.0.1 \
      --smtp "$SMTP_PORT" --web "$MAIL_WEB_PORT" --mail-directory "$MAILDEV_DIR"
  fi
  wait_infra maildev "http://127.0.0.1:$MAIL_WEB_PORT/healthz + smtp 127.0.0.1:$SMTP_PORT" maildev_up
}

# =============================================================================
# Jaeger — traces (every service exports to its OTLP receiver in development)
# =============================================================================
jaeger_up() { curl -fsS -o /dev/null --max-time 3 "http://127.0.0.1:$JAEGER_ADMIN_PORT/" && port_open "$OTLP_HTTP_PORT"; }

start_jaeger() {
  local pid
  if pid=$(running_pid jaeger); then
    note "jaeger: already running (pid $pid)"
  else
    clear_stale jaeger
    # shellcheck disable=SC2086  # a space-separated list of ports
    ensure_ports_free jaeger ${INFRA_PORTS[jaeger]}
    say "jaeger: starting (OTLP http://127.0.0.1:$OTLP_HTTP_PORT, UI and API http://127.0.0.1:$JAEGER_UI_PORT)"
    # Every listener on loopback (its defaults are all interfaces); spans in
    # memory, so a restart forgets them — this is a development tool. Its own
    # self-tracing (OTLP to localhost:4317 by default) samples nothing.
    launch jaeger "$STATE_DIR" env SPAN_STORAGE_TYPE=memory OTEL_TRACES_SAMPLER=always_off \
      OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$OTLP_GRPC_PORT" "$JAEGER_BIN" \
      --collector.otlp.enabled=true \
      --collector.otlp.http.host-port="127.0.0.1:$OTLP_HTTP_PORT" \
      --collector.otlp.grpc.host-port="127.0.0.1:$OTLP_GRPC_PORT" \
      --collector.http-server.host-port="127.0.0.1:$JAEGER_COLLECTOR_HTTP_PORT" \
      --collector.grpc-server.host-port="127.0.0.1:$JAEGER_COLLECTOR_GRPC_PORT" \
      --query.http-server.host-port="127.0.0.1:$JAEGER_UI_PORT" \
      --query.grpc-server.host-port="127.0.0.1:$JAEGER_QUERY_GRPC_PORT" \
      --admin.http.host-port="127.0.0.1:$JAEGER_ADMIN_PORT"
  fi
  wait_infra jaeger "http://127.0.0.1:$JAEGER_ADMIN_PORT/ + otlp 127.0.0.1:$OTLP_HTTP_PORT" jaeger_up
}

# =============================================================================
# infra-up / infra-down
# =============================================================================
write_test_env() {
  cat >"$STATE_DIR/test.env" <<EOF
export TESTKIT_POSTGRES_URL=postgres://testkit:testkit@127.0.0.1:$PG_PORT/postgres
export TESTKIT_MONGODB_URL=mongodb://127.0.0.1:$MONGO_PORT/
export TESTKIT_REDIS_URL=redis://127.0.0.1:$REDIS_PORT
export TESTKIT_AMQP_URL=amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f
export TESTKIT_RABBITMQ_API=http://guest:guest@127.0.0.1:$RABBIT_MGMT_PORT
export TESTKIT_SMTP_URL=smtp://127.0.0.1:$SMTP_PORT
export TESTKIT_MAIL_API=http://127.0.0.1:$MAIL_WEB_PORT
export TESTKIT_JAEGER_BIN=$JAEGER_BIN
EOF
}

cmd_infra_up() {
  cmd_install
  start_postgres
  start_redis
  start_rabbitmq
  start_ferretdb
  start_maildev
  start_jaeger
  write_test_env
  say "infrastructure is up; test settings: source $STATE_DIR/test.env"
}

cmd_infra_down() {
  say "stopping infrastructure"
  stop_component jaeger "$INFRA_STOP_TIMEOUT"
  stop_component maildev "$INFRA_STOP_TIMEOUT"
  stop_component ferretdb "$INFRA_STOP_TIMEOUT"
  stop_rabbitmq
  stop_component epmd "$INFRA_STOP_TIMEOUT"
  stop_component redis "$INFRA_STOP_TIMEOUT"
  stop_postgres
}

# =============================================================================
# services-up / services-down
# =============================================================================
print_summary() {
  local name http grpc _rest pid state
  printf '\n%-22s %-24s %-17s %s\n' SERVICE HTTP GRPC STATE
  while read -r name http grpc _rest; do
    if pid=$(running_pid "$name"); then state="running (pid $pid)"; else state="stopped"; fi
    printf '%-22s %-24s %-17s %s\n' "$name" "http://127.0.0.1:$http" "127.0.0.1:$grpc" "$state"
  done < <(table_rows "$SERVICES_TABLE")
  cat <<EOF

INFRASTRUCTURE
  PostgreSQL   postgres://127.0.0.1:$PG_PORT   (superuser: psql -h $PG_SOCKET_DIR -U postgres)
  Redis        redis://127.0.0.1:$REDIS_PORT
  RabbitMQ     amqp://127.0.0.1:$AMQP_PORT
  RabbitMQ UI  http://127.0.0.1:$RABBIT_MGMT_PORT   (guest / guest)
  MongoDB API  mongodb://127.0.0.1:$MONGO_PORT/   (FerretDB $FERRETDB_VERSION on PostgreSQL)
  Mail (SMTP)  smtp://127.0.0.1:$SMTP_PORT   read it at http://127.0.0.1:$MAIL_WEB_PORT   (MailDev $MAILDEV_VERSION)
  Traces       http://127.0.0.1:$JAEGER_UI_PORT   (Jaeger $JAEGER_VERSION; the services export to OTLP http://127.0.0.1:$OTLP_HTTP_PORT)

Logs:        $LOG_DIR/<name>.log
Test env:    source $STATE_DIR/test.env
Stop all:    make down   (or: deploy/local/stack.sh down)
EOF
}

# /readyz answers 200, and every consumer it reports ("consumer:<queue>") attached to its queue.
service_consuming() {
  local body
  body=$(curl -sf --max-time 2 "http://$1/readyz") || return 1
  ! grep -oE '"consumer:[^"]*":"[^"]*"' <<<"$body" | grep -vq ':"up"$'
}

# A development CA and, per service, a certificate it signed for localhost and
# 127.0.0.1, made once (kept across runs; delete .local/tls/ for new ones).
# P-256 keys in PKCS#8, what rustls reads. The CA key never leaves .local/tls/.
ensure_dev_certs() {
  local name
  command -v openssl >/dev/null || die "STACK_GRPC_TLS=1 needs openssl (apt-get install openssl)"
  mkdir -p "$TLS_DIR" && chmod 700 "$TLS_DIR"
  if [[ ! -s $TLS_DIR/ca.pem ]]; then
    say "making a development CA for gRPC TLS in $TLS_DIR"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc -days 3650 \
      -subj "/CN=shop development CA" -keyout "$TLS_DIR/ca-key.pem" -out "$TLS_DIR/ca.pem" 2>/dev/null \
      || die "openssl could not make the development CA"
  fi
  while read -r name _; do
    [[ -s $TLS_DIR/$name.pem ]] && continue
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc -subj "/CN=$name" \
      -keyout "$TLS_DIR/$name-key.pem" 2>/dev/null \
      | openssl x509 -req -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca-key.pem" -days 825 \
          -set_serial "0x$(openssl rand -hex 16)" -out "$TLS_DIR/$name.pem" \
          -extfile <(printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" \
                       "basicConstraints=critical,CA:FALSE" "extendedKeyUsage=serverAuth") 2>/dev/null \
      || die "openssl could not make the certificate of $name"
    note "$name: gRPC certificate $TLS_DIR/$name.pem"
  done < <(table_rows "$SERVICES_TABLE")
}

# The gRPC port of service $1, from the table.
grpc_port_of() {
  local name http grpc _rest
  while read -r name http grpc _rest; do
    [[ $name == "$1" ]] && { printf '%s' "$grpc"; return 0; }
  done < <(table_rows "$SERVICES_TABLE")
  return 1
}

# With STACK_GRPC_TLS=1, the TLS variables of service $1 (into the array TLS_ENV):
# its certificate, and for a caller the CA and https:// URLs of whom it calls.
grpc_tls_env() {
  local callee
  TLS_ENV=()
  (( GRPC_TLS )) || return 0
  TLS_ENV=("GRPC_TLS_CERT_FILE=$TLS_DIR/$1.pem" "GRPC_TLS_KEY_FILE=$TLS_DIR/$1-key.pem")
  local -a callees=()
  case $1 in
    order-service)        callees=(catalog-service inventory-service payment-service) ;;
    notification-service) callees=(user-service) ;;
  esac
  (( ${#callees[@]} )) || return 0
  TLS_ENV+=("GRPC_TLS_CA_FILE=$TLS_DIR/ca.pem")
  for callee in "${callees[@]}"; do
    TLS_ENV+=("$(tr '[:lower:]' '[:upper:]' <<<"${callee%-service}")_GRPC_URL=https://127.0.0.1:$(grpc_port_of "$callee")")
  done
}

cmd_services_up() {
  local bin_dir=${1:-$REPO_ROOT/target/debug}
  local name http grpc ops rest pid rc failed=0
  local -a missing=() env_args=() started=()

  [[ -d $bin_dir ]] || die "binary directory $bin_dir does not exist; build first (cargo build --workspace)"
  bin_dir=$(cd "$bin_dir" && pwd -P)
  while read -r name _; do
    [[ -x $bin_dir/$name ]] || missing+=("$name")
  done < <(table_rows "$SERVICES_TABLE")
  (( ${#missing[@]} == 0 )) || die "missing in $bin_dir: ${missing[*]} — build first (cargo build --workspace)"

  if ! running_pid postgres >/dev/null || ! running_pid rabbitmq >/dev/null; then
    warn "infrastructure does not seem to be running; start it with: deploy/local/stack.sh infra-up"
  fi

  if (( GRPC_TLS )); then ensure_dev_certs; fi
  say "starting services from $bin_dir, each ready before the next (up to ${SERVICE_TIMEOUT}s each)"
  while read -r name http grpc rest; do
    if pid=$(running_pid "$name"); then note "$name: already running (pid $pid)"; continue; fi
    clear_stale "$name"
    ops="127.0.0.1:$http"
    [[ $rest =~ (^|[[:space:]])OPS_ADDR=([^[:space:]]+) ]] && ops=${BASH_REMATCH[2]}
    ensure_ports_free "$name" "$http" "$grpc" "${ops##*:}"
    # Table columns first, then the extra KEY=VALUE words. Everything else in
    # our environment is inherited; export RUST_LOG, LOG_FORMAT or
    # OTEL_EXPORTER_OTLP_ENDPOINT yourself to override those defaults (spans go
    # to the stack's Jaeger, flushed every second so a trace shows up at once).
    # shellcheck disable=SC2206  # intentional word splitting of the env column
    # GLIBC_TUNABLES as in the image: docs/adr/0014-malloc-mmap-threshold.md.
    env_args=(HTTP_ADDR="127.0.0.1:$http" GRPC_ADDR="127.0.0.1:$grpc"
              LOG_FORMAT="${LOG_FORMAT:-json}" RUST_LOG="${RUST_LOG:-info}"
              OTEL_EXPORTER_OTLP_ENDPOINT="${OTEL_EXPORTER_OTLP_ENDPOINT:-http://127.0.0.1:$OTLP_HTTP_PORT}"
              OTEL_BSP_SCHEDULE_DELAY="${OTEL_BSP_SCHEDULE_DELAY:-1000}"
              GLIBC_TUNABLES="$GLIBC_TUNABLES_FOR_SERVICES" $rest)
    grpc_tls_env "$name"
    env_args+=("${TLS_ENV[@]}")
    launch "$name" "$REPO_ROOT" env "${env_args[@]}" "$bin_dir/$name"
    started+=("$name")
    rc=0
    wait_until "$name" "$SERVICE_TIMEOUT" service_consuming "$ops" || rc=$?
    case $rc in
      0) note "$name: ready (pid $(<"$(pidfile "$name")"))" ;;
      1) failed=1; warn "$name: http://$ops/readyz did not report ready with its consumers attached within ${SERVICE_TIMEOUT}s (still running, left as is)" ;;
      *) failed=1; warn "$name: process exited"; forget_pid "$name" ;;
    esac
    if (( rc )); then
      printf '    last lines of %s:\n' "$LOG_DIR/$name.log" >&2
      log_tail "$name" >&2
    fi
  done < <(table_rows "$SERVICES_TABLE")

  print_summary
  (( failed == 0 )) || die "some services are not ready (see above)"
}

cmd_services_down() {
  local name pid
  local -a pids=() names=()
  say "stopping services"
  # Send TERM to all of them first, then wait: they shut down in parallel.
  while read -r name; do
    if pid=$(running_pid "$name"); then
      note "$name: stopping pid $pid"
      signal_tree TERM "$pid"
      pids+=("$pid"); names+=("$name")
    else
      clear_stale "$name"
    fi
  done < <(service_names)
  local deadline=$((SECONDS + SERVICE_STOP_TIMEOUT)) i
  for i in "${!pids[@]}"; do
    if ! wait_exit "${pids[i]}" $((deadline > SECONDS ? deadline - SECONDS : 0)); then
      warn "${names[i]} (pid ${pids[i]}) did not exit within ${SERVICE_STOP_TIMEOUT}s; sending KILL"
      signal_tree KILL "${pids[i]}"
      wait_exit "${pids[i]}" 5 || warn "${names[i]} survived KILL?!"
    fi
    forget_pid "${names[i]}"
  done
  (( ${#pids[@]} )) || note "no services were running"
}

# =============================================================================
# status
# =============================================================================
cmd_status() {
  local c pid where name http grpc _rest
  declare -A where=(
    [postgres]="127.0.0.1:$PG_PORT" [redis]="127.0.0.1:$REDIS_PORT" [epmd]="127.0.0.1:$EPMD_PORT"
    [rabbitmq]="127.0.0.1:$AMQP_PORT, http://127.0.0.1:$RABBIT_MGMT_PORT"
    [ferretdb]="127.0.0.1:$MONGO_PORT"
    [maildev]="smtp 127.0.0.1:$SMTP_PORT, http://127.0.0.1:$MAIL_WEB_PORT"
    [jaeger]="otlp http://127.0.0.1:$OTLP_HTTP_PORT, http://127.0.0.1:$JAEGER_UI_PORT"
  )
  status_line() {
    local name=$1 addr=$2 state
    if pid=$(running_pid "$name"); then state="running (pid $pid)"
    elif [[ -e $(pidfile "$name") ]]; then state="stopped (stale pid file)"
    else state="stopped"; fi
    printf '%-22s %-26s %s\n' "$name" "$state" "$addr"
  }
  for c in "${INFRA[@]}"; do status_line "$c" "${where[$c]}"; done
  while read -r name http grpc _rest; do
    status_line "$name" "http 127.0.0.1:$http, grpc 127.0.0.1:$grpc"
  done < <(table_rows "$SERVICES_TABLE")
}

# =============================================================================
# main
# =============================================================================
usage() {
  cat <<EOF
Usage: deploy/local/stack.sh <command> [args]

  install               install missing Debian packages, build FerretDB and Jaeger (idempotent)
  infra-up              install, then start PostgreSQL, Redis, RabbitMQ, FerretDB, MailDev,
                        Jaeger and write .local/test.env
  infra-down            stop the infrastructure started by infra-up
  services-up [BIN_DIR] start the seven services (default BIN_DIR: target/debug)
                        and wait for their /readyz
  services-down         stop the services
  up [BIN_DIR]          infra-up + services-up
  down                  services-down + infra-down
  status                one line per component
  rabbitmqctl ARGS...   run rabbitmqctl against our node
  psql ARGS...          psql as the postgres superuser over the unix socket

Environment: STACK_INFRA_TIMEOUT (120), STACK_SERVICE_TIMEOUT (60) and
STACK_SERVICE_STOP_TIMEOUT (30) change the waits. STACK_GRPC_TLS=1 runs gRPC
between the services over TLS with a development CA made in $TLS_DIR. RUST_LOG / LOG_FORMAT /
OTEL_EXPORTER_OTLP_ENDPOINT override the services' defaults (info / json /
the stack's Jaeger); every other exported variable is passed through.

State: $STATE_DIR   Logs: $LOG_DIR
EOF
}

main() {
  local cmd=${1:-help}
  (( $# )) && shift
  case $cmd in
    help|-h|--help) usage; return 0 ;;
    status) cmd_status; return 0 ;;
    rabbitmqctl)
      # (Refused while the node is down: the Erlang CLI would otherwise
      # start a stray epmd daemon of its own.)
      running_pid rabbitmq >/dev/null || die "rabbitmq is not running (deploy/local/stack.sh infra-up)"
      with_rabbit_env "$RABBIT_BIN/rabbitmqctl" "$@"; return ;;
    psql)
      running_pid postgres >/dev/null || die "postgres is not running (deploy/local/stack.sh infra-up)"
      exec "$PG_BIN/psql" -h "$PG_SOCKET_DIR" -p "$PG_PORT" -U postgres "$@" ;;
    install|infra-up|infra-down|services-up|services-down|up|down) ;;
    *) usage >&2; die "unknown command: $cmd" ;;
  esac

  mkdir -p "$RUN_DIR" "$LOG_DIR"
  # One stack.sh at a time per checkout: a second `up` waits for the first.
  exec 9>"$RUN_DIR/stack.lock"
  flock -w 600 9 || die "another stack.sh is still running (lock: $RUN_DIR/stack.lock)"

  case $cmd in
    install)       cmd_install ;;
    infra-up)      cmd_infra_up ;;
    infra-down)    cmd_infra_down ;;
    services-up)   cmd_services_up "$@" ;;
    services-down) cmd_services_down ;;
    up)            cmd_infra_up; cmd_services_up "$@" ;;
    down)          cmd_services_down; cmd_infra_down ;;
  esac
}

main "$@"
