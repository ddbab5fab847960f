#!/usr/bin/env bash
# Serving overhead of authentication and rate limiting, everything on 127.0.0.1: the k6 closed
# loop of GetOnlineFeatures (CELLS: batch 1 × 10 features and batch 100 × 50 by default) against
# `fstore serve` with security off and in each security mode, in one run, alternating the modes
# (ORDER) so that drift of the machine during the run falls on both sides. Target: each mode costs
# at most 5 % of the req/s of `off`.
#   off:       FSTORE_AUTH=off, no rate limits (the baseline);
#   keys:      FSTORE_AUTH=on; k6 sends `authorization: Bearer <API key>`, a key bootstrapped into
#              the benchmark schema with `fstore keys create --bootstrap --grant reader@bench`;
#   jwt:       FSTORE_AUTH=on, FSTORE_JWT_ISSUER / FSTORE_JWT_AUDIENCE pointing at
#              bench/jwt-issuer.ts (RS256, discovery + JWKS on 127.0.0.1:JWT_PORT); k6 sends its one
#              token (roles: reader@bench), so after the first call per process the verified
#              token comes from the server's per-token cache;
#   ratelimit: FSTORE_AUTH=off, FSTORE_RATE_LIMIT_REQUESTS_PER_SECOND and _ROWS_PER_SECOND at
#              RATE_LIMIT (10,000,000/s: far above what these cores can serve), so nothing is
#              refused and only the mechanism is measured: every call takes tokens from the
#              process's stock, leased from the shared bucket in Redis (~20 Lua script calls per
#              second per process for the one principal, `anonymous`);
#   keys-ratelimit: keys and ratelimit together (the production combination); not in the
#              default ORDER.
# Metrics and tracing are off in every mode (FSTORE_METRICS=off, no OTLP endpoint) to isolate the
# cost of security; the access log stays at its default (errors only). Each segment restarts the
# server in its mode, warms it up (5 s, not recorded: JIT, connections, the JWKS fetch), runs the
# k6 closed loop per CELL and records the CPU of the server, k6 and Redis. Seeding (bench/seed.ts,
# which sends no credentials) is done first, on a server of its own with authentication off. Every
# call must return OK: the script stops at once if a warm-up saw a failed call, and exits 1 (after
# writing the report) if any measured call failed. Report: bench/results/security-<date>.md (the
# JSON beside it, in bench/results/security-<date>/).
#
#   bash bench/run-security.sh
#   DURATION=3s ORDER="off keys jwt ratelimit" bash bench/run-security.sh   # smoke test, ~2 min
#
# Knobs (environment): PORT (6566), JWT_PORT (4320), ORDER ("off keys jwt ratelimit ratelimit jwt
# keys off"), CELLS ("1x10 100x50", batch x features), VUS (32), DURATION (20s), ROWS (100000),
# SERVER_PROCESSES (2), RATE_LIMIT (10000000, per second, requests and rows), KEEP_DATA (0),
# QUIET_THRESHOLD (0.15), QUIET_MAX_WAIT (30), QUIET_BUDGET (180).
# About 7½ minutes with the defaults on a quiet machine (8 segments of ~52 s: server start ~4 s,
# warm-up 5 s, 2 cells × (20 s + ~1.5 s); plus ~15 s for the key, the issuer and seeding), at most
# QUIET_BUDGET more on a busy one.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"
cd "$REPO_ROOT"

PORT="${PORT:-6566}"
ADDR="127.0.0.1:$PORT"
JWT_PORT="${JWT_PORT:-4320}"
ORDER="${ORDER:-off keys jwt ratelimit ratelimit jwt keys off}"
CELLS="${CELLS:-1x10 100x50}"
VUS="${VUS:-32}"
DURATION="${DURATION:-20s}"
ROWS="${ROWS:-100000}"
SERVER_PROCESSES="${SERVER_PROCESSES:-2}"
RATE_LIMIT="${RATE_LIMIT:-10000000}"
KEEP_DATA="${KEEP_DATA:-0}"
QUIET_THRESHOLD="${QUIET_THRESHOLD:-0.15}"
QUIET_MAX_WAIT="${QUIET_MAX_WAIT:-30}"
QUIET_BUDGET="${QUIET_BUDGET:-180}"
OPEN_VUS=8 # lib.sh's open_loop (not used here) expects it
PROJECT=bench # bench/seed.ts's and bench/online-lookup.js's default project
JWT_ISSUER="http://127.0.0.1:$JWT_PORT" # exactly what bench/jwt-issuer.ts puts in discovery and `iss`
JWT_AUDIENCE="fstore-bench"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT_DIR="$BENCH_DIR/results/security-$STAMP"
REPORT="$BENCH_DIR/results/security-$STAMP.md"
mkdir -p "$OUT_DIR"

LOG_TAG=run-security
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

for mode in $ORDER; do
  case "$mode" in
    off | keys | jwt | ratelimit | keys-ratelimit) ;;
    *) log "ERROR: unknown mode $mode in ORDER (off, keys, jwt, ratelimit, keys-ratelimit)"; exit 2 ;;
  esac
done
has_mode() { [[ " $ORDER " == *" $1 "* ]]; }

SERVER_PID=""
ISSUER_PID=""
API_KEY=""
API_KEY_ID=""
TOKEN=""
revoke_bench_key() {
  [[ -n "$API_KEY_ID" ]] || return 0
  log "revoking the benchmark API key $API_KEY_ID"
  psql -q -X "$POSTGRES_URL" -c \
    "UPDATE \"$SCHEMA\".api_keys SET revoked_at = now() WHERE id = '$API_KEY_ID' AND revoked_at IS NULL" \
    >/dev/null 2>&1 || log "could not revoke key $API_KEY_ID (it expires by itself within a day)"
}
on_exit() {
  local code=$?
  stop_pid "$SERVER_PID" "fstore serve"
  stop_pid "$ISSUER_PID" "jwt-issuer"
  revoke_bench_key
  if [[ "$KEEP_DATA" != "1" ]]; then
    delete_bench_keys
  fi
  exit "$code"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

mode_env() { # mode_env <mode>: the environment of the server in that mode, one VAR=value per word
  # Every security setting is given in every mode, so nothing leaks in from the caller's environment.
  local base="FSTORE_METRICS=off FSTORE_OTLP_ENDPOINT= FSTORE_AUTH_API_KEYS=on FSTORE_JWT_ISSUER= FSTORE_JWT_AUDIENCE= FSTORE_JWT_JWKS_URL="
  local unlimited="FSTORE_RATE_LIMIT_REQUESTS_PER_SECOND=0 FSTORE_RATE_LIMIT_ROWS_PER_SECOND=0"
  local limited="FSTORE_RATE_LIMIT_REQUESTS_PER_SECOND=$RATE_LIMIT FSTORE_RATE_LIMIT_ROWS_PER_SECOND=$RATE_LIMIT FSTORE_RATE_LIMIT_REQUEST_BURST=0 FSTORE_RATE_LIMIT_ROW_BURST=0"
  case "$1" in
    off) echo "$base FSTORE_AUTH=off $unlimited" ;;
    keys) echo "$base FSTORE_AUTH=on $unlimited" ;;
    jwt) echo "$base FSTORE_AUTH=on FSTORE_JWT_ISSUER=$JWT_ISSUER FSTORE_JWT_AUDIENCE=$JWT_AUDIENCE $unlimited" ;;
    ratelimit) echo "$base FSTORE_AUTH=off $limited" ;;
    keys-ratelimit) echo "$base FSTORE_AUTH=on $limited" ;;
  esac
}

# K6_ARGS: the extra k6 arguments of a mode (the credential, as the `authorization` metadata).
set_k6_args() { # set_k6_args <mode>
  K6_ARGS=(-e PROJECT="$PROJECT")
  case "$1" in
    keys | keys-ratelimit) K6_ARGS+=(-e "AUTHORIZATION=Bearer $API_KEY") ;;
    jwt) K6_ARGS+=(-e "AUTHORIZATION=Bearer $TOKEN") ;;
  esac
}

# "<non-OK calls> <calls>" of a k6 summary file, "missing" if k6 wrote none.
k6_errors() {
  node -e '
    const fs = require("node:fs");
    if (!fs.existsSync(process.argv[1])) { console.log("missing"); process.exit(0); }
    const s = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
    console.log(`${s.requests - s.requests_ok} ${s.requests}`);' "$1"
}

# Calls of the rate limiter's Lua script (EVALSHA + EVAL) Redis has served so far (all clients).
redis_script_calls() {
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" INFO commandstats | tr -d '\r' \
    | awk -F'[:=,]' '/^cmdstat_(evalsha|eval):/ { total += $3 } END { print total + 0 }'
}

# How many of the principal's two shared token buckets (requests, rows) are in Redis, right after
# a cell (they expire ~2 s after the last lease): proof that the limiter really went through Redis.
# "null" in modes without rate limits.
rate_limit_buckets() { # rate_limit_buckets <mode>
  local principal
  case "$1" in
    ratelimit) principal=anonymous ;;
    keys-ratelimit) principal="key:$API_KEY_ID" ;;
    *) echo null; return ;;
  esac
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" -n "$REDIS_DB" EXISTS \
    "${KEY_PREFIX}rl:{$principal}:req" "${KEY_PREFIX}rl:{$principal}:rows" || echo null
}

log "results: $OUT_DIR"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
bash "$BENCH_DIR/setup.sh"
bash scripts/servers.sh start >/dev/null
REDIS_PID="$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" INFO server | tr -d '\r' | sed -n 's/^process_id://p')"
port_free "$PORT" || { log "ERROR: port $PORT is already in use; set PORT"; exit 1; }
if has_mode jwt; then
  port_free "$JWT_PORT" || { log "ERROR: port $JWT_PORT is already in use; set JWT_PORT"; exit 1; }
fi

if has_mode keys || has_mode keys-ratelimit; then
  log "creating the benchmark API key (reader@$PROJECT, expires in 1 day, revoked at the end)"
  API_KEY="$(FSTORE_POSTGRES_URL="$POSTGRES_URL" FSTORE_POSTGRES_SCHEMA="$SCHEMA" FSTORE_LOG_LEVEL=warn \
    node bin/fstore.js keys create --bootstrap --name bench-security --grant "reader@$PROJECT" --expires-in 1d \
    2>"$OUT_DIR/key-create.log")" || { log "ERROR: fstore keys create --bootstrap failed:"; cat "$OUT_DIR/key-create.log" >&2; exit 1; }
  if [[ ! "$API_KEY" =~ ^fsk_([a-z2-7]{12})_ ]]; then
    log "ERROR: fstore keys create --bootstrap printed no key"; cat "$OUT_DIR/key-create.log" >&2; exit 1
  fi
  API_KEY_ID="${BASH_REMATCH[1]}"
  log "API key $API_KEY_ID created"
fi

if has_mode jwt; then
  rm -f "$OUT_DIR/jwt-token"
  node --import tsx "$BENCH_DIR/jwt-issuer.ts" --port "$JWT_PORT" --project "$PROJECT" --audience "$JWT_AUDIENCE" \
    --token-file "$OUT_DIR/jwt-token" --stats-file "$OUT_DIR/issuer.json" >"$OUT_DIR/issuer.log" 2>&1 &
  ISSUER_PID=$!
  for _ in $(seq 1 150); do [[ -s "$OUT_DIR/jwt-token" ]] && break; kill -0 "$ISSUER_PID" 2>/dev/null || break; sleep 0.1; done
  if [[ ! -s "$OUT_DIR/jwt-token" ]]; then log "ERROR: bench/jwt-issuer.ts did not start:"; cat "$OUT_DIR/issuer.log" >&2; exit 1; fi
  TOKEN="$(cat "$OUT_DIR/jwt-token")"
  rm -f "$OUT_DIR/jwt-token" # the results directory keeps no credential
  log "JWT issuer on $JWT_ISSUER (pid $ISSUER_PID)"
fi

# bench/seed.ts sends no credential (and needs admin): seed on a server of its own with
# authentication off, stopped before the first segment, so that no measured server carries the
# seeding's heap and JIT state (it would handicap whichever mode comes first).
# shellcheck disable=SC2046 # one VAR=value per word
start_fstore "$ADDR" "$SERVER_PROCESSES" "$OUT_DIR/server-seed.log" $(mode_env off)
log "seeding $ROWS entities per view"
tsnode "$BENCH_DIR/seed.ts" --addr "$ADDR" --project "$PROJECT" --rows "$ROWS" | tee "$OUT_DIR/seed.json"
stop_pid "$SERVER_PID" "fstore serve"
SERVER_PID=""

ERRORS=()
segment=0
for mode in $ORDER; do
  segment=$((segment + 1))
  tag="s$segment-$mode"
  set_k6_args "$mode"
  # shellcheck disable=SC2046 # one VAR=value per word
  start_fstore "$ADDR" "$SERVER_PROCESSES" "$OUT_DIR/server-$tag.log" $(mode_env "$mode")
  rm -f "$OUT_DIR/warmup.json"
  warm_up "$ADDR" "${K6_ARGS[@]}"
  read -r bad calls < <(k6_errors "$OUT_DIR/warmup.json")
  if [[ "$bad" == missing || "$calls" == 0 || "$bad" != 0 ]]; then
    log "ERROR: the warm-up of $tag failed ($bad of ${calls:-?} calls not OK; k6's first error is above): nothing would be measured"
    log "server log:"; tail -n 20 "$OUT_DIR/server-$tag.log" >&2
    exit 1
  fi
  for cell in $CELLS; do
    batch="${cell%x*}"; features="${cell#*x}"
    prefix="$tag-b${batch}xf${features}-max"
    log "$tag, closed loop b${batch}xf${features}: $VUS VUs, $DURATION"
    scripts0="$(redis_script_calls)"
    closed_loop "$ADDR" "$SERVER_PID" "$prefix" "b${batch}xf${features}" "$batch" "$features" "$DURATION" "${K6_ARGS[@]}"
    buckets="$(rate_limit_buckets "$mode")"
    scripts1="$(redis_script_calls)"
    echo "{\"script_calls\": $((scripts1 - scripts0)), \"rate_limit_buckets\": $buckets}" >"$OUT_DIR/redis-$prefix.json"
    read -r bad calls < <(k6_errors "$OUT_DIR/$prefix.json")
    if [[ "$bad" == missing || "$calls" == 0 || "$bad" != 0 ]]; then
      log "ERROR: $prefix: $bad of ${calls:-?} calls not OK"
      ERRORS+=("$prefix: $bad of ${calls:-?} calls not OK")
    fi
  done
  stop_pid "$SERVER_PID" "fstore serve"
  SERVER_PID=""
  if grep -qE '"level":(40|50|60)' "$OUT_DIR/server-$tag.log" 2>/dev/null; then
    log "the server logged warnings or errors in $tag: see $OUT_DIR/server-$tag.log"
  fi
done
stop_pid "$ISSUER_PID" "jwt-issuer"
ISSUER_PID=""

json_list() { local out; out="$(printf '"%s",' "$@")"; echo "[${out%,}]"; }
modes_json() {
  local out="" mode
  for mode in $(printf '%s\n' $ORDER | awk '!seen[$0]++'); do
    out+="$(json_str "$mode"): $(json_str "$(mode_env "$mode" | sed -E ':a; s/(^| )FSTORE_[A-Z_]+=( |$)/\1/; ta')"),"
  done
  echo "{${out%,}}"
}
# shellcheck disable=SC2086 # one word per entry
cat >"$OUT_DIR/meta.json" <<JSON
{
  "date": $(json_str "$(date -u)"),
  "command": $(json_str "bash bench/run-security.sh  (ORDER=\"$ORDER\" CELLS=\"$CELLS\" VUS=$VUS DURATION=$DURATION ROWS=$ROWS SERVER_PROCESSES=$SERVER_PROCESSES RATE_LIMIT=$RATE_LIMIT)"),
  $(machine_json)
  "serverProcesses": $SERVER_PROCESSES,
  "vus": $VUS,
  "duration": "$DURATION",
  "rateLimit": $RATE_LIMIT,
  "project": "$PROJECT",
  "apiKeyId": $(json_str "$API_KEY_ID"),
  "jwtIssuer": $(json_str "$(has_mode jwt && echo "$JWT_ISSUER" || true)"),
  "jwtAudience": "$JWT_AUDIENCE",
  "modeEnv": $(modes_json),
  "order": $(json_list $ORDER),
  "cells": $(json_list $CELLS)
}
JSON

node "$BENCH_DIR/security-report.mjs" "$OUT_DIR" >"$REPORT"
cat "$REPORT"
log "report: $REPORT"
if (( ${#ERRORS[@]} > 0 )); then
  log "ERROR: k6 saw calls that were not OK; the figures above measure failures, not the service:"
  for line in "${ERRORS[@]}"; do log "  $line"; done
  exit 1
fi
