#!/usr/bin/env bash
# Guards the gRPC contracts at the schema level: `buf lint` on proto/, and `buf breaking`
# against the committed baseline image proto/baseline.binpb (the protos as last accepted).
# Consumer-driven contracts (shared/contract) check what consumers use today; this check
# catches wire/JSON-incompatible edits to any message, used yet or not.
#
#   scripts/proto-check.sh                   lint, breaking check, baseline up to date
#   scripts/proto-check.sh update-baseline   accept the current protos as the new baseline
#   scripts/proto-check.sh selftest          prove that the check rejects breaking changes
#
# buf is installed on first use with `go install` (only the Go module proxy is needed) into
# ${XDG_CACHE_HOME:-$HOME/.cache}/shop-tools/bin, at the version pinned below.
set -euo pipefail

BUF_VERSION=v1.75.0
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROTO_DIR=$ROOT/proto
BASELINE=$PROTO_DIR/baseline.binpb
TOOLS=${XDG_CACHE_HOME:-$HOME/.cache}/shop-tools/bin
BUF=$TOOLS/buf
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

die() {
  echo "proto-check: $*" >&2
  exit 1
}

ensure_buf() {
  if [[ -x $BUF && "$("$BUF" --version 2>/dev/null)" == "${BUF_VERSION#v}" ]]; then
    return
  fi
  local go
  go=$(command -v go || echo /usr/local/go/bin/go)
  [[ -x $go ]] || die "buf is missing and Go is not installed to build it (looked for go on PATH and /usr/local/go/bin/go)"
  echo "proto-check: installing buf $BUF_VERSION into $TOOLS" >&2
  mkdir -p "$TOOLS"
  GOBIN=$TOOLS "$go" install "github.com/bufbuild/buf/cmd/buf@$BUF_VERSION"
}

# Builds the image of the module in directory $1 into file $2. Source info (comments, line
# numbers) is left out: editing a comment must not change the baseline.
build_image() {
  (cd "$1" && "$BUF" build --exclude-source-info -o "$2")
}

# `buf breaking` of the module in directory $1 against image $2, using proto/buf.yaml's rules.
breaking() {
  (cd "$1" && "$BUF" breaking --against "$2")
}

check() {
  [[ -f $BASELINE ]] || die "no baseline at ${BASELINE#"$ROOT"/}; create it with: scripts/proto-check.sh update-baseline"
  (cd "$PROTO_DIR" && "$BUF" lint) || die "buf lint failed (see above)"
  breaking "$PROTO_DIR" "$BASELINE" ||
    die "breaking change against ${BASELINE#"$ROOT"/} (see above). Prefer an additive change (new field or
method, reserve removed numbers and names). If the break is intended and every client is
updated in the same release, accept it with: scripts/proto-check.sh update-baseline"

  # The baseline must follow every accepted change, or a field added after it could later be
  # removed without the check noticing.
  build_image "$PROTO_DIR" "$SCRATCH/current.binpb"
  cmp -s "$SCRATCH/current.binpb" "$BASELINE" ||
    die "the protos changed compatibly but the baseline was not updated; run: scripts/proto-check.sh update-baseline"
  echo "proto-check: lint and breaking-change check passed"
}

update_baseline() {
  (cd "$PROTO_DIR" && "$BUF" lint) || die "buf lint failed (see above); fix it before accepting a baseline"
  build_image "$PROTO_DIR" "$BASELINE"
  echo "proto-check: wrote ${BASELINE#"$ROOT"/}; commit it with the .proto change"
}

# Field definitions such as `  repeated string ids = 1;` (not reserved ranges, not options).
FIELD='^[[:space:]]+(repeated[[:space:]]+|optional[[:space:]]+)?[A-Za-z_][A-Za-z0-9_.]*[[:space:]]+[a-z_][a-z0-9_]*[[:space:]]*=[[:space:]]*[0-9]+[[:space:]]*;'

# Copies proto/ into a scratch directory, applies one edit with $2 (a sed script; empty for
# none) to the first file that has a field, and checks that `buf breaking` against the
# original gives verdict $3, "accepted" or "rejected". $1 names the edit.
expect_verdict() {
  local name=$1 edit=$2 expected=$3 scratch file verdict
  scratch=$(mktemp -d "$SCRATCH/selftest.XXXXXX")
  cp -R "$PROTO_DIR/." "$scratch/"
  rm -f "$scratch/baseline.binpb"
  build_image "$scratch" "$scratch/original.binpb"
  file=$(cd "$scratch" && grep -rlE --include='*.proto' "$FIELD" . | sort | head -n1)
  [[ -n $file ]] || die "selftest: no .proto file with a field to edit"
  if [[ -n $edit ]]; then
    cp "$scratch/$file" "$scratch/before.txt"
    sed -E -i "$edit" "$scratch/$file"
    ! cmp -s "$scratch/before.txt" "$scratch/$file" || die "selftest: the edit '$name' changed nothing in $file"
    rm -f "$scratch/before.txt"
  fi
  # The edited protos must still compile, so a rejection is a breaking change, not a typo.
  build_image "$scratch" "$scratch/edited.binpb" || die "selftest: the edit '$name' does not compile"
  if breaking "$scratch" "$scratch/original.binpb" >"$scratch/out.txt" 2>&1; then verdict=accepted; else verdict=rejected; fi
  if [[ $verdict != "$expected" ]]; then
    cat "$scratch/out.txt" >&2
    die "selftest: $name in $file was $verdict, expected $expected"
  fi
  echo "proto-check selftest: $name in ${file#./}: $verdict, as expected"
}

selftest() {
  # The first field definition of the file, found by the same pattern as above.
  local first="0,/$FIELD/"
  expect_verdict "no change" "" accepted
  expect_verdict "deleting a field" "${first}{/$FIELD/d}" rejected
  expect_verdict "renumbering a field" "${first}{/$FIELD/s/=[[:space:]]*([0-9]+)[[:space:]]*;/= 4242\\1;/}" rejected
  expect_verdict "changing a field's type" "${first}{/$FIELD/s/^([[:space:]]+)(repeated[[:space:]]+|optional[[:space:]]+)?[A-Za-z_][A-Za-z0-9_.]*/\\1\\2double/}" rejected
  expect_verdict "adding a field" "0,/^message[[:space:]]+[A-Za-z0-9_]+[[:space:]]*\\{/{s/^(message[[:space:]]+[A-Za-z0-9_]+[[:space:]]*\\{)/\\1\\n  string selftest_added = 9999;/}" accepted
}

ensure_buf
case "${1:-check}" in
  check) check ;;
  update-baseline) update_baseline ;;
  selftest) selftest ;;
  *) die "usage: scripts/proto-check.sh [check|update-baseline|selftest]" ;;
esac
