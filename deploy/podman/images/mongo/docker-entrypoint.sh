#!/usr/bin/env bash
# Entrypoint of the MongoDB stand-in image: FerretDB where the official image runs mongod, with
# the official image's documented behaviour.
#   mongod [flags]   --port N and --bind_ip_all are understood, other mongod flags are reported
#                    and ignored; FerretDB listens on 0.0.0.0:<port>, SQLite files in /data/db
#   anything else    executed as given
# On the first start (empty /data/db): with MONGO_INITDB_ROOT_USERNAME / _PASSWORD the root user
# is created in `admin` (and authentication is on from then on); then every file of
# /docker-entrypoint-initdb.d runs, in name order, against a FerretDB on 127.0.0.1 only (so
# nothing outside the container sees a half-initialized server): *.js with mongosh in
# MONGO_INITDB_DATABASE (default `test`) as the root user, *.sh executed or sourced. Any failure
# stops the container.
set -Eeuo pipefail

log() { printf '%s [entrypoint] %s\n' "$(date -u '+%F %T UTC')" "$*"; }

if [[ ${1:-} == -* ]]; then set -- mongod "$@"; fi
[[ ${1:-} == mongod ]] || exec "$@"
shift

port=27017
while (( $# )); do
  case $1 in
    --port) port=$2; shift ;;
    --port=*) port=${1#*=} ;;
    --bind_ip_all) ;;
    --auth) ;;   # on anyway when a root user is configured
    *) log "mongod flag '$1' has no FerretDB equivalent here; ignored" ;;
  esac
  shift
done

root_user=${MONGO_INITDB_ROOT_USERNAME:-}
root_pass=${MONGO_INITDB_ROOT_PASSWORD:-}
if [[ -n $root_user && -z $root_pass ]] || [[ -z $root_user && -n $root_pass ]]; then
  log "error: set both MONGO_INITDB_ROOT_USERNAME and MONGO_INITDB_ROOT_PASSWORD, or neither"
  exit 1
fi

data=/data/db
flags=(--handler=sqlite "--sqlite-url=file:$data/" "--state-dir=$data" --telemetry=disable
       "--log-level=${FERRETDB_LOG_LEVEL:-info}" --debug-addr=-)
if [[ -n $root_user ]]; then
  # The root user is created when FerretDB initializes an empty backend, and authentication
  # (SCRAM) is enforced for every command but the handshake and ping.
  flags+=(--test-enable-new-auth "--setup-username=$root_user" "--setup-password=$root_pass"
          --setup-database=admin)
fi

if [[ ! -e $data/.stand-in-initialized ]]; then
  shopt -s nullglob
  scripts=(/docker-entrypoint-initdb.d/*)
  if (( ${#scripts[@]} )); then
    log "initializing $data: FerretDB on 127.0.0.1:$port for the init scripts"
    ferretdb "${flags[@]}" "--listen-addr=127.0.0.1:$port" &
    init_pid=$!
    trap 'kill "$init_pid" 2>/dev/null || true' EXIT
    shell=(mongosh --quiet --host 127.0.0.1 --port "$port")
    [[ -z $root_user ]] || shell+=(-u "$root_user" -p "$root_pass" --authenticationDatabase admin)
    for _ in $(seq 120); do
      "${shell[@]}" --eval 'db.adminCommand({ ping: 1 }).ok' >/dev/null 2>&1 && break
      kill -0 "$init_pid" 2>/dev/null || { log "FerretDB exited during initialization"; exit 1; }
      sleep 0.5
    done
    export MONGO_INITDB_DATABASE=${MONGO_INITDB_DATABASE:-test}
    STANDIN_AUTH=off
    [[ -z $root_user ]] || STANDIN_AUTH=on
    export STANDIN_AUTH
    for f in "${scripts[@]}"; do
      case $f in
        *.js)
          log "running $f"
          "${shell[@]}" "$MONGO_INITDB_DATABASE" \
            --eval "$(cat /usr/local/share/ferretdb-standin/create-user-without-roles.js); void 0" "$f" ;;
        *.sh)
          log "running $f"
          if [[ -x $f ]]; then "$f"; else . "$f"; fi ;;
        *) log "ignoring $f" ;;
      esac
    done
    kill "$init_pid"
    wait "$init_pid" || true
    trap - EXIT
  fi
  touch "$data/.stand-in-initialized"
  log "initialization complete"
fi

auth=off
[[ -z $root_user ]] || auth="on, root user $root_user"
log "FerretDB $(ferretdb --version | sed -n 's/^version: //p') on 0.0.0.0:$port (SQLite in $data, authentication $auth)"
exec ferretdb "${flags[@]}" "--listen-addr=0.0.0.0:$port"
