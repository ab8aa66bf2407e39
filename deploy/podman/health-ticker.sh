#!/usr/bin/env bash
# deploy/podman/health-ticker.sh PROJECT SECONDS — run the healthchecks of a compose project's
# containers until stopped (compose-test.sh starts it and stops it by pid).
#
# Why this exists: podman schedules each container's healthcheck with a systemd timer. Without
# systemd (containers, CI machines) nothing ever runs the check, the health stays "starting"
# forever, and `depends_on: condition: service_healthy` / `docker compose up --wait` never finish.
# `podman healthcheck run` runs a check once and records the result as the timer would (same
# command, timeout, retries and start-period accounting), so calling it on schedule gives the
# behaviour a Docker engine has:
#   - while a container is "starting", every SECONDS seconds (Docker's start_interval; podman 4
#     does not keep that setting, so the ticker supplies it);
#   - once "healthy" or "unhealthy", every `interval` of the container's own healthcheck.
# Each check runs in the background, so a slow one delays no other container.
set -uo pipefail

project=${1:?usage: health-ticker.sh PROJECT SECONDS}
period=${2:-2}

declare -A interval=()   # container id -> its healthcheck interval, seconds
declare -A last=()       # container id -> when its last check started (SECONDS)
declare -A running=()    # container id -> pid of a check still running

while :; do
  while read -r id status; do
    [[ -n $id ]] || continue
    # "Up 5 seconds (starting)": containers without a healthcheck carry no "(...)".
    [[ $status =~ \((starting|healthy|unhealthy)\) ]] || continue
    state=${BASH_REMATCH[1]}
    if [[ -n ${running[$id]:-} ]] && kill -0 "${running[$id]}" 2>/dev/null; then continue; fi
    if [[ -z ${interval[$id]:-} ]]; then
      # (as JSON a Go duration is a number of nanoseconds)
      ns=$(podman inspect --format '{{json .Config.Healthcheck.Interval}}' "$id" 2>/dev/null || echo 0)
      [[ $ns =~ ^[0-9]+$ ]] || ns=0
      interval[$id]=$(( ns > 0 ? ns / 1000000000 : 30 ))
    fi
    if [[ $state != starting ]] && (( SECONDS - ${last[$id]:-0} < ${interval[$id]} )); then continue; fi
    last[$id]=$SECONDS
    podman healthcheck run "$id" >/dev/null 2>&1 &
    running[$id]=$!
  done < <(podman ps --filter "label=com.docker.compose.project=$project" --format '{{.ID}} {{.Status}}' 2>/dev/null)
  sleep "$period"
done
