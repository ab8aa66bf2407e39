#!/usr/bin/env bash
# Guards the public REST API at the schema level, as scripts/proto-check.sh guards the protos.
# The committed document services/gateway/openapi.json (what the gateway serves) is both the
# published contract and the baseline: the services' code generates the current document
# (`cargo run -p gateway --example openapi`), and
#
#   * both are valid OpenAPI 3.1 (openapi-spec-validator),
#   * the current one breaks nothing a client of the committed one relies on (oasdiff breaking),
#   * and they are equal: a compatible change is accepted by regenerating the committed file.
#
#   scripts/openapi-check.sh                   validate, breaking-change check, committed file up to date
#   scripts/openapi-check.sh update            regenerate services/gateway/openapi.json (refused if breaking)
#   scripts/openapi-check.sh update --breaking regenerate it although the change is breaking
#   scripts/openapi-check.sh selftest          prove that the checks reject what they should
#
# The tools are pinned and cached by scripts/openapi-tools.sh (oasdiff via `go install`, the
# validator in a Python venv).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMMITTED=$ROOT/services/gateway/openapi.json
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

die() {
  echo "openapi-check: $*" >&2
  exit 1
}

OASDIFF=$("$ROOT/scripts/openapi-tools.sh" oasdiff)
VENV=$("$ROOT/scripts/openapi-tools.sh" venv)

generate() {
  (cd "$ROOT" && cargo run -q --locked -p gateway --example openapi) >"$1" ||
    die "could not generate the document (cargo run -p gateway --example openapi failed; see above)"
}

validate() {
  "$VENV/bin/openapi-spec-validator" --schema 3.1 "$1" >"$SCRATCH/validate.txt" 2>&1 || {
    cat "$SCRATCH/validate.txt" >&2
    return 1
  }
}

# Exit status 0 when $2 breaks nothing of $1 (errors; warnings are printed, not fatal).
breaking() {
  "$OASDIFF" breaking "$1" "$2" --fail-on ERR
}

same_json() {
  "$VENV/bin/python" - "$1" "$2" <<'PY'
import json, sys
a, b = (json.load(open(path)) for path in sys.argv[1:3])
sys.exit(0 if a == b else 1)
PY
}

check() {
  generate "$SCRATCH/current.json"
  validate "$COMMITTED" || die "${COMMITTED#"$ROOT"/} is not valid OpenAPI 3.1 (see above)"
  validate "$SCRATCH/current.json" || die "the generated document is not valid OpenAPI 3.1 (see above)"
  breaking "$COMMITTED" "$SCRATCH/current.json" ||
    die "the services' code now breaks the published API (see above). Prefer an additive change
(a new optional field or parameter, a new operation). If the break is intended and every client
is updated in the same release, accept it with: scripts/openapi-check.sh update --breaking"
  same_json "$COMMITTED" "$SCRATCH/current.json" ||
    die "the API changed compatibly but ${COMMITTED#"$ROOT"/} was not regenerated; run: scripts/openapi-check.sh update"
  echo "openapi-check: valid OpenAPI 3.1, no breaking change, ${COMMITTED#"$ROOT"/} up to date"
}

update() {
  generate "$SCRATCH/current.json"
  validate "$SCRATCH/current.json" || die "the generated document is not valid OpenAPI 3.1 (see above)"
  if [[ ${1:-} != --breaking ]]; then
    breaking "$COMMITTED" "$SCRATCH/current.json" ||
      die "breaking change (see above); if intended: scripts/openapi-check.sh update --breaking"
  fi
  cp "$SCRATCH/current.json" "$COMMITTED"
  echo "openapi-check: wrote ${COMMITTED#"$ROOT"/}; commit it with the change"
}

# Applies a Python edit (a statement on `doc`) to a copy of the committed document and checks
# that the breaking-change check gives verdict $3 ("accepted" or "rejected"). $1 names the edit.
expect_verdict() {
  local name=$1 edit=$2 expected=$3 verdict
  "$VENV/bin/python" - "$COMMITTED" "$SCRATCH/edited.json" "$edit" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
exec(sys.argv[3])
json.dump(doc, open(sys.argv[2], "w"))
PY
  validate "$SCRATCH/edited.json" || die "selftest: the edit '$name' makes the document invalid"
  if breaking "$COMMITTED" "$SCRATCH/edited.json" >"$SCRATCH/out.txt" 2>&1; then verdict=accepted; else verdict=rejected; fi
  if [[ $verdict != "$expected" ]]; then
    cat "$SCRATCH/out.txt" >&2
    die "selftest: $name was $verdict, expected $expected"
  fi
  echo "openapi-check selftest: $name: $verdict, as expected"
}

selftest() {
  expect_verdict "no change" "pass" accepted
  expect_verdict "removing an operation" \
    "del doc['paths']['/api/v1/orders/{id}/cancel']" rejected
  expect_verdict "a new required request field" \
    "s = doc['components']['schemas']['NewOrder']; s['properties']['coupon'] = {'type': 'string'}; s['required'].append('coupon')" rejected
  expect_verdict "removing a response field" \
    "del doc['components']['schemas']['Order']['properties']['total']; doc['components']['schemas']['Order']['required'].remove('total')" rejected
  expect_verdict "a tighter limit" \
    "doc['components']['schemas']['NewOrder']['properties']['items']['maxItems'] = 5" rejected
  expect_verdict "a new optional query parameter" \
    "doc['paths']['/api/v1/orders']['get']['parameters'].append({'name': 'since', 'in': 'query', 'required': False, 'schema': {'type': 'string'}})" accepted
  # And the validator refuses what is not OpenAPI 3.1: a path parameter that is not required.
  "$VENV/bin/python" - "$COMMITTED" "$SCRATCH/invalid.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
doc["paths"]["/api/v1/orders/{id}"]["get"]["parameters"][0]["required"] = False
json.dump(doc, open(sys.argv[2], "w"))
PY
  if validate "$SCRATCH/invalid.json" 2>/dev/null; then
    die "selftest: the validator accepted a path parameter that is not required"
  fi
  echo "openapi-check selftest: an optional path parameter: invalid, as expected"
}

case "${1:-check}" in
  check) check ;;
  update) update "${2:-}" ;;
  selftest) selftest ;;
  *) die "usage: scripts/openapi-check.sh [check|update [--breaking]|selftest]" ;;
esac
