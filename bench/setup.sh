#!/usr/bin/env bash
# Builds k6 (the load generator of the gRPC benchmarks) into bench/bin/k6 from the Go module
# proxy, unless a k6 of the wanted version is already there. Idempotent; bench/bin/ is gitignored.
#
# Environment (optional):
#   K6_VERSION   module version to build (default v1.8.1: the newest v1.x on the proxy when this
#                was written; it needs Go >= 1.25, see its go.mod)
#   K6_BUILD_TIMEOUT  seconds allowed for the build (default 900)
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN_DIR="$BENCH_DIR/bin"
K6="$BIN_DIR/k6"
K6_VERSION="${K6_VERSION:-v1.8.1}"
K6_BUILD_TIMEOUT="${K6_BUILD_TIMEOUT:-900}"

log() { printf '[bench/setup] %s\n' "$*" >&2; }

if [[ -x "$K6" ]] && "$K6" version 2>/dev/null | grep -q "k6 ${K6_VERSION}"; then
  log "k6 ${K6_VERSION} already built: $K6"
  exit 0
fi

command -v go >/dev/null || { log "ERROR: Go is not installed (needed to build k6 ${K6_VERSION})"; exit 1; }
go_version="$(go env GOVERSION)"          # e.g. go1.26.8
go_minor="$(sed -E 's/^go1\.([0-9]+).*/\1/' <<<"$go_version")"
if [[ ! "$go_minor" =~ ^[0-9]+$ ]] || (( go_minor < 25 )); then
  log "ERROR: k6 ${K6_VERSION} needs Go >= 1.25, found ${go_version}; set K6_VERSION to an older release"
  exit 1
fi

mkdir -p "$BIN_DIR"
log "building k6 ${K6_VERSION} with ${go_version} (first time: a few minutes)..."
# -mod=mod: resolve k6's dependencies from its go.mod (it vendors nothing we could use here);
# CGO off gives a static binary and needs no C toolchain.
GOBIN="$BIN_DIR" GOFLAGS="${GOFLAGS:-} -mod=mod" CGO_ENABLED=0 \
  timeout "$K6_BUILD_TIMEOUT" go install "go.k6.io/k6@${K6_VERSION}"
"$K6" version
