#!/usr/bin/env bash
# One full online-lookup benchmark run (DESIGN §8), everything on 127.0.0.1:
#   1. builds k6 if needed (bench/setup.sh) and starts Redis + PostgreSQL (scripts/servers.sh start);
#   2. starts `fstore serve --processes 2` against Redis db 1 with key prefix `bench:` and the
#      registry schema `fstore_bench`, and waits for grpc.health.v1 SERVING;
#   3. seeds 100,000 entities into views bench10 and bench50 (bench/seed.ts);
#   4. per cell (batch 1, 10, 100) × (features 10, 50): k6 closed loop (max throughput), with the
#      CPU seconds of the server, k6, redis-server and everything else on the machine;
#   5. the latency scenarios of the targets, open model: batch 1 × 10 features at 2,000 req/s
#      (and at LATENCY_RATE_LOW, a load the machine is not saturated by), batch 100 × 50 features
#      at LATENCY_RATE_B100 req/s; p99;
#   6. stops the server; per cell, the same k6 closed loop (and the open-model scenarios) against
#      bench/grpc-floor.ts (grpc-js answering a cached response of the same shape: the transport
#      floor), then the raw baseline (ioredis MGET + msgpack decode of the same keys) with 1 and
#      2 processes;
#   7. writes the Markdown report to bench/results/online-<date>.md (the JSON next to it, in
#      bench/results/online-<date>/), deletes the benchmark keys (KEEP_DATA=1 keeps them).
#
#   bash bench/run-online.sh
#
# Knobs (environment): PORT (6566), FLOOR_PORT (6567), VUS (32), DURATION (20s), FLOOR_DURATION
# (10s), RAW_DURATION (10, seconds), RAW_PROCESSES ("1 2"), ROWS (100000), LATENCY_RATE_B1 (2000),
# LATENCY_RATE_B100 (100), LATENCY_RATE_LOW (500), OPEN_VUS (8), BATCHES ("1 10 100"),
# FEATURE_COUNTS ("10 50"), SERVER_PROCESSES (2), KEEP_DATA (0), SKIP_FLOOR (0), QUIET_THRESHOLD
# (0.15 cores), QUIET_MAX_WAIT (30 s), QUIET_BUDGET (180 s).
# About 8 minutes with the defaults on a quiet machine (at most QUIET_BUDGET more on a busy one).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"
cd "$REPO_ROOT"

PORT="${PORT:-6566}"
ADDR="127.0.0.1:$PORT"
FLOOR_PORT="${FLOOR_PORT:-6567}"
VUS="${VUS:-32}"
DURATION="${DURATION:-20s}"
FLOOR_DURATION="${FLOOR_DURATION:-10s}"
RAW_DURATION="${RAW_DURATION:-10}"
RAW_PROCESSES="${RAW_PROCESSES:-1 2}"
ROWS="${ROWS:-100000}"
LATENCY_RATE_B1="${LATENCY_RATE_B1:-2000}"
LATENCY_RATE_B100="${LATENCY_RATE_B100:-100}"
LATENCY_RATE_LOW="${LATENCY_RATE_LOW:-500}"
# Open model: VUs k6 starts with (it adds up to 64 when calls pile up). Few: on 2 cores every idle
# VU is a goroutine + JS runtime competing with the server, and 32 of them alone push the p99 of
# the gRPC floor from ~4 ms to ~65 ms at 100 req/s (batch 100 × 50).
OPEN_VUS="${OPEN_VUS:-8}"
QUIET_THRESHOLD="${QUIET_THRESHOLD:-0.15}" # cores busy while nothing of ours runs
QUIET_MAX_WAIT="${QUIET_MAX_WAIT:-30}"
QUIET_BUDGET="${QUIET_BUDGET:-180}"
BATCHES="${BATCHES:-1 10 100}"
FEATURE_COUNTS="${FEATURE_COUNTS:-10 50}"
SERVER_PROCESSES="${SERVER_PROCESSES:-2}"
KEEP_DATA="${KEEP_DATA:-0}"
SKIP_FLOOR="${SKIP_FLOOR:-0}"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT_DIR="$BENCH_DIR/results/online-$STAMP"
REPORT="$BENCH_DIR/results/online-$STAMP.md"
mkdir -p "$OUT_DIR"
SERVER_LOG="$OUT_DIR/server.log"

LOG_TAG=run-online
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
SERVER_PID=""
FLOOR_PID=""
cleanup_data() {
  if [[ "$KEEP_DATA" != "1" ]]; then
    delete_bench_keys
  fi
}
on_exit() {
  local code=$?
  stop_pid "$SERVER_PID" "fstore serve"
  stop_pid "$FLOOR_PID" "grpc-floor"
  cleanup_data
  exit "$code"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------------------------------
log "results: $OUT_DIR"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
bash "$BENCH_DIR/setup.sh"
bash scripts/servers.sh start >/dev/null
REDIS_PID="$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" INFO server | tr -d '\r' | sed -n 's/^process_id://p')"

port_free "$PORT" || { log "ERROR: port $PORT is already in use; set PORT"; exit 1; }
port_free "$FLOOR_PORT" || { log "ERROR: port $FLOOR_PORT is already in use; set FLOOR_PORT"; exit 1; }

start_fstore "$ADDR" "$SERVER_PROCESSES" "$SERVER_LOG"

log "seeding $ROWS entities per view"
tsnode "$BENCH_DIR/seed.ts" --addr "$ADDR" --rows "$ROWS" | tee "$OUT_DIR/seed.json"

CELLS=()
for batch in $BATCHES; do for features in $FEATURE_COUNTS; do CELLS+=("b${batch}xf${features}"); done; done

warm_up "$ADDR"

for batch in $BATCHES; do
  for features in $FEATURE_COUNTS; do
    cell="b${batch}xf${features}"
    log "service, closed loop $cell: $VUS VUs, $DURATION"
    closed_loop "$ADDR" "$SERVER_PID" "k6-$cell-max" "$cell" "$batch" "$features" "$DURATION"
  done
done

LATENCY_JSON="["
open_model() { # open_model <service|floor> <addr> <duration> <cell> <batch> <features> <rate> <p99 target ms> [k6 -e...]
  local target="$1" addr="$2" duration="$3" cell="$4" batch="$5" features="$6" rate="$7" p99="$8"; shift 8
  local file="$target-$cell-rate$rate.json"
  open_loop "$addr" "$file" "$duration" "$cell" "$batch" "$features" "$rate" "$@"
  [[ "$LATENCY_JSON" == "[" ]] || LATENCY_JSON+=","
  LATENCY_JSON+="{\"target\":\"$target\",\"cell\":\"$cell\",\"rate\":$rate,\"p99TargetMs\":$p99,\"file\":\"$file\"}"
}
open_model service "$ADDR" "$DURATION" b1xf10 1 10 "$LATENCY_RATE_B1" 1
open_model service "$ADDR" "$DURATION" b1xf10 1 10 "$LATENCY_RATE_LOW" 1
open_model service "$ADDR" "$DURATION" b100xf50 100 50 "$LATENCY_RATE_B100" 5

# The baselines need no FStore: stop it, so each baseline gets the machine as the service did.
stop_pid "$SERVER_PID" "fstore serve"
SERVER_PID=""
if grep -qE '"level":(40|50|60)' "$SERVER_LOG" 2>/dev/null; then
  log "the server logged warnings or errors during the run: see $SERVER_LOG"
fi

if [[ "$SKIP_FLOOR" != "1" ]]; then
  FLOOR_ADDR="127.0.0.1:$FLOOR_PORT"
  log "starting bench/grpc-floor.ts --processes $SERVER_PROCESSES on $FLOOR_ADDR"
  # node itself, not the tsnode function: $! must be the server's pid (its workers are its children).
  node --import tsx "$BENCH_DIR/grpc-floor.ts" --port "$FLOOR_PORT" --processes "$SERVER_PROCESSES" >"$OUT_DIR/floor.log" 2>&1 &
  FLOOR_PID=$!
  for _ in $(seq 1 100); do [[ "$(grep -c listening "$OUT_DIR/floor.log" 2>/dev/null)" -ge "$SERVER_PROCESSES" ]] && break; sleep 0.1; done
  "$K6" run --quiet --no-color --no-usage-report -e ADDR="$FLOOR_ADDR" -e PROTO_DIR="$REPO_ROOT/proto" \
    -e SUMMARY_FILE="$OUT_DIR/floor-warmup.json" -e BATCH=10 -e FEATURES=10 -e VUS=8 -e DURATION=3s \
    "$BENCH_DIR/online-lookup.js" >/dev/null
  for batch in $BATCHES; do
    for features in $FEATURE_COUNTS; do
      cell="b${batch}xf${features}"
      log "gRPC floor, closed loop $cell: $VUS VUs, $FLOOR_DURATION"
      closed_loop "$FLOOR_ADDR" "$FLOOR_PID" "floor-$cell" "$cell" "$batch" "$features" "$FLOOR_DURATION" \
        -e PROTO_DIR="$REPO_ROOT/proto"
    done
  done
  open_model floor "$FLOOR_ADDR" "$FLOOR_DURATION" b1xf10 1 10 "$LATENCY_RATE_B1" 1 -e PROTO_DIR="$REPO_ROOT/proto"
  open_model floor "$FLOOR_ADDR" "$FLOOR_DURATION" b1xf10 1 10 "$LATENCY_RATE_LOW" 1 -e PROTO_DIR="$REPO_ROOT/proto"
  open_model floor "$FLOOR_ADDR" "$FLOOR_DURATION" b100xf50 100 50 "$LATENCY_RATE_B100" 5 -e PROTO_DIR="$REPO_ROOT/proto"
  stop_pid "$FLOOR_PID" "grpc-floor"
  FLOOR_PID=""
fi
LATENCY_JSON+="]"

RAW_CONCURRENCY="$VUS"
for batch in $BATCHES; do
  for features in $FEATURE_COUNTS; do
    cell="b${batch}xf${features}"
    for processes in $RAW_PROCESSES; do
      wait_quiet "raw-$cell-p$processes"
      log "raw baseline $cell: $RAW_CONCURRENCY loops, $processes process(es), ${RAW_DURATION} s"
      tsnode "$BENCH_DIR/raw-baseline.ts" --redis-url "$REDIS_URL" --key-prefix "$KEY_PREFIX" \
        --postgres-url "$POSTGRES_URL" --schema "$SCHEMA" --batch "$batch" --features "$features" \
        --id-max "$ROWS" --concurrency "$RAW_CONCURRENCY" --processes "$processes" \
        --duration "$RAW_DURATION" --warmup 1 --json "$OUT_DIR/raw-$cell-p$processes.json" >/dev/null
    done
  done
done

cells_json="$(printf '"%s",' "${CELLS[@]}")"; cells_json="[${cells_json%,}]"
# shellcheck disable=SC2086 # one word per process count
raw_json="$(printf '%s,' $RAW_PROCESSES)"; raw_json="[${raw_json%,}]"
cat >"$OUT_DIR/meta.json" <<EOF
{
  "date": $(json_str "$(date -u)"),
  "command": $(json_str "bash bench/run-online.sh  (VUS=$VUS DURATION=$DURATION FLOOR_DURATION=$FLOOR_DURATION RAW_DURATION=$RAW_DURATION ROWS=$ROWS LATENCY_RATE_B1=$LATENCY_RATE_B1 LATENCY_RATE_B100=$LATENCY_RATE_B100 LATENCY_RATE_LOW=$LATENCY_RATE_LOW OPEN_VUS=$OPEN_VUS)"),
  $(machine_json)
  "serverProcesses": $SERVER_PROCESSES,
  "redisUrl": "$REDIS_URL",
  "keyPrefix": "$KEY_PREFIX",
  "schema": "$SCHEMA",
  "rows": $ROWS,
  "vus": $VUS,
  "duration": "$DURATION",
  "floorDuration": "$FLOOR_DURATION",
  "rawConcurrency": $RAW_CONCURRENCY,
  "rawDuration": $RAW_DURATION,
  "rawProcesses": $raw_json,
  "cells": $cells_json,
  "latencyScenarios": $LATENCY_JSON
}
EOF

node "$BENCH_DIR/report.mjs" "$OUT_DIR" >"$REPORT"
cat "$REPORT"
log "report: $REPORT"
