#!/usr/bin/env bash
# Entrypoint of the Redis stand-in image (the official image's documented behaviour):
# flags alone mean `redis-server <flags>`; the server runs as the redis user; without a config
# file (first argument not a *.conf) protected mode is switched off, since in a container the
# compose network, not the loopback interface, is what keeps strangers out.
set -euo pipefail
if [[ ${1:-} == -* || ${1:-} == *.conf ]]; then set -- redis-server "$@"; fi
if [[ ${1:-} == redis-server ]]; then
  if [[ ${2:-} != *.conf && " $* " != *" --protected-mode "* ]]; then
    set -- "$@" --protected-mode no
  fi
  if (( $(id -u) == 0 )); then
    chown -R redis:redis /data 2>/dev/null || true
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
  fi
fi
exec "$@"
