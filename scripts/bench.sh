#!/usr/bin/env bash
# scripts/bench.sh — what `make bench` runs (QUICK=1: `scripts/bench.sh --quick`).
#
#   1. installs nginx from Debian's packages if it is missing (the reference proxy), with
#      service starts forbidden during apt-get so no system nginx grabs port 80;
#   2. builds every binary in release (the seven services and shop-bench) and times it;
#   3. runs `shop-bench run`, which starts its own copy of the system on free ports against
#      fresh databases/vhosts of the infrastructure `make infra-up` started, runs the five
#      scenarios and writes the report.
#
# The full run writes bench/report.md and bench/results/; the quick one writes to
# target/bench-quick/, and one of some scenarios only (ONLY=1,4: `--only 1,4`) to
# target/bench-only/, so neither replaces the committed report.
set -euo pipefail

REPO_ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$REPO_ROOT"

QUICK=0
ONLY=
while (( $# )); do
  case $1 in
    --quick) QUICK=1 ;;
    --only) ONLY=${2:?--only needs a list such as 1,4}; shift ;;
    *) echo "usage: scripts/bench.sh [--quick] [--only 1,4]" >&2; exit 2 ;;
  esac
  shift
done

as_root() { if (( EUID == 0 )); then "$@"; else sudo "$@"; fi; }

install_nginx() {
  command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] && return 0
  echo "==> installing nginx (Debian package nginx-light) as the reference proxy"
  local policy=/usr/sbin/policy-rc.d wrote=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# written by scripts/bench.sh: no service starts during apt-get\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 0755 "$policy"
    wrote=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx-light \
    || { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
         as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx-light; } \
    || echo "WARNING: could not install nginx; scenario 1 will run without the reference" >&2
  (( wrote )) && as_root rm -f "$policy"
  return 0
}

install_nginx

# The release build, timed. When nothing needed compiling, the report names the last build
# that did (kept in target/release/.bench-build-time).
record=target/release/.bench-build-time
started=$SECONDS
log=$(mktemp)
cargo build --release --bins --locked 2>&1 | tee "$log" >&2
seconds=$((SECONDS - started))
if grep -q 'Compiling ' "$log"; then
  build="$seconds s (cargo build --release --bins, this run, $(date -u '+%Y-%m-%d %H:%M UTC'))"
  printf '%s\n' "$build" >"$record"
else
  build="already built; the last release build that compiled took $(cat "$record" 2>/dev/null || echo 'an unknown time')"
fi
rm -f "$log"

if (( QUICK )); then
  exec target/release/shop-bench run --quick --bin-dir target/release --out target/bench-quick --build "$build" \
    ${ONLY:+--only "$ONLY"}
elif [[ -n $ONLY ]]; then
  exec target/release/shop-bench run --only "$ONLY" --bin-dir target/release --out target/bench-only --build "$build"
else
  exec target/release/shop-bench run --bin-dir target/release --out bench --build "$build"
fi
