#!/usr/bin/env bash
# Entrypoint of the RabbitMQ stand-in image: RABBITMQ_DEFAULT_USER / _PASS / _VHOST become
# conf.d settings (read by the server on its first boot, as in the official image),
# RABBITMQ_ERLANG_COOKIE the node's cookie; the server runs as the rabbitmq user.
set -euo pipefail
if [[ ${1:-} == rabbitmq-server ]]; then
  conf=/etc/rabbitmq/conf.d/20-environment.conf
  : >"$conf"
  [[ -z ${RABBITMQ_DEFAULT_USER:-} ]] || printf 'default_user = %s\n' "$RABBITMQ_DEFAULT_USER" >>"$conf"
  [[ -z ${RABBITMQ_DEFAULT_PASS:-} ]] || printf 'default_pass = %s\n' "$RABBITMQ_DEFAULT_PASS" >>"$conf"
  [[ -z ${RABBITMQ_DEFAULT_VHOST:-} ]] || printf 'default_vhost = %s\n' "$RABBITMQ_DEFAULT_VHOST" >>"$conf"
  if [[ -n ${RABBITMQ_ERLANG_COOKIE:-} ]]; then
    printf '%s' "$RABBITMQ_ERLANG_COOKIE" >/var/lib/rabbitmq/.erlang.cookie
    chmod 0400 /var/lib/rabbitmq/.erlang.cookie
  fi
  # (A mounted /etc/rabbitmq/rabbitmq.conf is read by the server itself, before conf.d.)
  if (( $(id -u) == 0 )); then
    chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /etc/rabbitmq/conf.d 2>/dev/null || true
    exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups /usr/lib/rabbitmq/bin/rabbitmq-server
  fi
  exec /usr/lib/rabbitmq/bin/rabbitmq-server
fi
exec "$@"
