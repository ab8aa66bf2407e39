#!/usr/bin/env bash
# Entrypoint of the PostgreSQL stand-in image: the documented behaviour of the official image's
# entrypoint, written for Debian's packages.
#   - `postgres ...` (or only flags) runs the server as the postgres user;
#   - on an empty $PGDATA: initdb with POSTGRES_USER (default postgres) and POSTGRES_PASSWORD
#     (required unless POSTGRES_HOST_AUTH_METHOD=trust), remote logins by POSTGRES_HOST_AUTH_METHOD
#     (default scram-sha-256), POSTGRES_DB created (default: the user name), then every file in
#     /docker-entrypoint-initdb.d in name order (*.sh run or sourced, *.sql[.gz|.xz|.zst] fed to
#     psql) against a server reachable only over its unix socket; any failure stops the container;
#   - anything else is executed as given.
set -Eeuo pipefail

if [[ ${1:-} == -* ]]; then set -- postgres "$@"; fi
[[ ${1:-} == postgres ]] || exec "$@"

# Root: prepare the directories, then run this script again as postgres.
if (( $(id -u) == 0 )); then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 0700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
fi

log() { printf '%s [entrypoint] %s\n' "$(date -u '+%F %T UTC')" "$*"; }

export POSTGRES_USER=${POSTGRES_USER:-postgres}
export POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}

if [[ ! -s $PGDATA/PG_VERSION ]]; then
  if [[ -z ${POSTGRES_PASSWORD:-} && $auth != trust ]]; then
    cat >&2 <<'EOF'
Error: the database is uninitialized and POSTGRES_PASSWORD is not set.
       Set POSTGRES_PASSWORD to a non-empty value for the superuser
       (or POSTGRES_HOST_AUTH_METHOD=trust to allow every connection without one).
EOF
    exit 1
  fi
  log "initializing $PGDATA for superuser $POSTGRES_USER"
  pwfile=$(mktemp)
  printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
  # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of flags, as in the official image
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" -D "$PGDATA" \
    ${POSTGRES_INITDB_WALDIR:+--waldir="$POSTGRES_INITDB_WALDIR"} ${POSTGRES_INITDB_ARGS:-}
  rm -f "$pwfile"
  printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"

  # A temporary server on the unix socket only: nobody outside sees a half-initialized database.
  export PGPASSWORD=${POSTGRES_PASSWORD:-}
  pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -p 5432" start
  psql_base=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
  if [[ $POSTGRES_DB != postgres ]]; then
    exists=$("${psql_base[@]}" --dbname postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '${POSTGRES_DB//\'/\'\'}'")
    if [[ -z $exists ]]; then
      log "creating database $POSTGRES_DB"
      "${psql_base[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
    fi
  fi
  psql=("${psql_base[@]}" --dbname "$POSTGRES_DB")
  for f in /docker-entrypoint-initdb.d/*; do
    [[ -e $f ]] || continue
    case $f in
      *.sh)
        if [[ -x $f ]]; then log "running $f"; "$f"
        else log "sourcing $f"; . "$f"; fi ;;
      *.sql)     log "running $f"; "${psql[@]}" -f "$f" ;;
      *.sql.gz)  log "running $f"; gunzip -c "$f" | "${psql[@]}" ;;
      *.sql.xz)  log "running $f"; xzcat "$f" | "${psql[@]}" ;;
      *.sql.zst) log "running $f"; zstd -dc "$f" | "${psql[@]}" ;;
      *)         log "ignoring $f" ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop
  unset PGPASSWORD
  log "initialization complete; starting the server"
else
  log "$PGDATA holds a database already; skipping initialization"
fi

exec "$@"
