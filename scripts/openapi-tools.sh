#!/usr/bin/env bash
# Installs the tools that check the public OpenAPI document, each pinned and cached by version
# (like buf in scripts/proto-check.sh), and prints nothing but their locations:
#
#   oasdiff       the breaking-change check (Go module, `go install`)
#                 -> ${XDG_CACHE_HOME:-$HOME/.cache}/shop-tools/bin/oasdiff
#   a Python venv with openapi-spec-validator (OpenAPI 3.1 validation) and Schemathesis
#                 -> ${XDG_CACHE_HOME:-$HOME/.cache}/shop-tools/openapi-venv-<pins>
#
#   scripts/openapi-tools.sh oasdiff   path of the oasdiff binary (installed on first use)
#   scripts/openapi-tools.sh venv      path of the venv (created on first use)
#
# Only the Go module proxy and PyPI are contacted, and only when the cache lacks the pinned version.
set -euo pipefail

OASDIFF_VERSION=v1.39.0
# One line per package: the exact versions the checks were written against.
PYTHON_PINS=(
  "openapi-spec-validator==0.9.0"
  "schemathesis==4.32.5"
  "openapi-python-client==0.29.1"
)
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/shop-tools
BIN=$CACHE/bin

die() {
  echo "openapi-tools: $*" >&2
  exit 1
}

oasdiff() {
  local exe=$BIN/oasdiff stamp=$BIN/oasdiff.version
  if [[ -x $exe && -f $stamp && "$(cat "$stamp")" == "$OASDIFF_VERSION" ]]; then
    echo "$exe"
    return
  fi
  local go
  go=$(command -v go || echo /usr/local/go/bin/go)
  [[ -x $go ]] || die "oasdiff is missing and Go is not installed to build it (looked for go on PATH and /usr/local/go/bin/go)"
  echo "openapi-tools: installing oasdiff $OASDIFF_VERSION into $BIN" >&2
  mkdir -p "$BIN"
  GOBIN=$BIN "$go" install "github.com/oasdiff/oasdiff@$OASDIFF_VERSION" >&2
  echo "$OASDIFF_VERSION" >"$stamp"
  echo "$exe"
}

venv() {
  local key dir python
  key=$(printf '%s\n' "${PYTHON_PINS[@]}" | sha256sum | cut -c1-12)
  dir=$CACHE/openapi-venv-$key
  if [[ -x $dir/bin/python && -f $dir/.complete ]]; then
    echo "$dir"
    return
  fi
  python=$(command -v python3) || die "python3 is needed for the OpenAPI checks"
  echo "openapi-tools: creating $dir (${PYTHON_PINS[*]})" >&2
  rm -rf "$dir"
  "$python" -m venv "$dir" >&2
  "$dir/bin/pip" install --quiet --disable-pip-version-check "${PYTHON_PINS[@]}" >&2
  touch "$dir/.complete"
  echo "$dir"
}

case "${1:-}" in
  oasdiff) oasdiff ;;
  venv) venv ;;
  *) die "usage: scripts/openapi-tools.sh oasdiff|venv" ;;
esac
