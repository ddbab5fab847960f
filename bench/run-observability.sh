#!/usr/bin/env bash
# Serving overhead of metrics + tracing (issue 5), everything on 127.0.0.1: the online lookup
# benchmark against `fstore serve` with observability off and on, in one run, alternating
# off / on / on / off (ORDER) so that drift of the machine during the run falls on both sides.
#   off: FSTORE_METRICS=off, no FSTORE_OTLP_ENDPOINT (no metrics port, no spans);
#   on:  FSTORE_METRICS=on (and /metrics scraped every SCRAPE_INTERVAL s, as Prometheus would),
#        FSTORE_OTLP_ENDPOINT to bench/otlp-sink.ts, FSTORE_TRACE_SAMPLE_RATIO=1 (every call traced:
#        the worst case);
#   metrics: metrics as in "on", no tracing (to split the cost); not in the default ORDER;
#   sampled: "on" plus FSTORE_SERVED_SAMPLE_RATE=0.01 (served values sampled for drift); not in the
#        default ORDER.
# Each segment restarts the server in its mode, warms it up, runs the k6 closed loop per CELL and
# the open-model scenarios, and records the server's CPU. The access log stays at its default
# (errors only) in every mode. Report: bench/results/observability-<date>.md (JSON beside it).
#
#   bash bench/run-observability.sh
#
# Knobs (environment): PORT (6566), METRICS_PORT (9465), SINK_PORT (4319), ORDER ("off on on off"),
# CELLS ("1x10 100x50", batch x features), VUS (32), DURATION (15s), OPEN ("1x10@500 100x50@100",
# batch x features @ req/s), OPEN_VUS (8), ROWS (100000), SERVER_PROCESSES (2), SCRAPE_INTERVAL (5),
# KEEP_DATA (0), QUIET_THRESHOLD (0.15), QUIET_MAX_WAIT (30), QUIET_BUDGET (180).
# About 8 minutes with the defaults.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"
cd "$REPO_ROOT"

PORT="${PORT:-6566}"
ADDR="127.0.0.1:$PORT"
METRICS_PORT="${METRICS_PORT:-9465}"
SINK_PORT="${SINK_PORT:-4319}"
ORDER="${ORDER:-off on on off}"
CELLS="${CELLS:-1x10 100x50}"
OPEN="${OPEN:-1x10@500 100x50@100}"
VUS="${VUS:-32}"
DURATION="${DURATION:-15s}"
OPEN_VUS="${OPEN_VUS:-8}"
ROWS="${ROWS:-100000}"
SERVER_PROCESSES="${SERVER_PROCESSES:-2}"
SCRAPE_INTERVAL="${SCRAPE_INTERVAL:-5}"
KEEP_DATA="${KEEP_DATA:-0}"
QUIET_THRESHOLD="${QUIET_THRESHOLD:-0.15}"
QUIET_MAX_WAIT="${QUIET_MAX_WAIT:-30}"
QUIET_BUDGET="${QUIET_BUDGET:-180}"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT_DIR="$BENCH_DIR/results/observability-$STAMP"
REPORT="$BENCH_DIR/results/observability-$STAMP.md"
mkdir -p "$OUT_DIR"

LOG_TAG=run-observability
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

SERVER_PID=""
SINK_PID=""
SCRAPER_PID=""
on_exit() {
  local code=$?
  [[ -z "$SCRAPER_PID" ]] || kill "$SCRAPER_PID" 2>/dev/null || true
  stop_pid "$SERVER_PID" "fstore serve"
  stop_pid "$SINK_PID" "otlp-sink"
  if [[ "$KEEP_DATA" != "1" ]]; then
    delete_bench_keys
  fi
  exit "$code"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

mode_env() { # mode_env <mode>: the environment of the server in that mode, one VAR=value per word
  local metrics="FSTORE_METRICS=on FSTORE_METRICS_HOST=127.0.0.1 FSTORE_METRICS_PORT=$METRICS_PORT"
  local on="$metrics FSTORE_OTLP_ENDPOINT=http://127.0.0.1:$SINK_PORT/v1/traces FSTORE_TRACE_SAMPLE_RATIO=1"
  case "$1" in
    off) echo "FSTORE_METRICS=off FSTORE_OTLP_ENDPOINT=" ;;
    metrics) echo "$metrics FSTORE_OTLP_ENDPOINT=" ;;
    on) echo "$on" ;;
    sampled) echo "$on FSTORE_SERVED_SAMPLE_RATE=0.01" ;;
    *) log "ERROR: unknown mode $1 in ORDER (off, metrics, on, sampled)"; exit 2 ;;
  esac
}

# Scrapes /metrics every SCRAPE_INTERVAL s while the server runs; one line per scrape (HTTP code, bytes, seconds).
start_scraper() { # start_scraper <out file>
  local out="$1"
  ( while sleep "$SCRAPE_INTERVAL"; do
      curl -s -o /dev/null -w '%{http_code} %{size_download} %{time_total}\n' --max-time 5 \
        "http://127.0.0.1:$METRICS_PORT/metrics" >>"$out" || echo "000 0 0" >>"$out"
    done ) &
  SCRAPER_PID=$!
}

log "results: $OUT_DIR"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
bash "$BENCH_DIR/setup.sh"
bash scripts/servers.sh start >/dev/null
REDIS_PID="$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" INFO server | tr -d '\r' | sed -n 's/^process_id://p')"
for port in "$PORT" "$METRICS_PORT" "$SINK_PORT"; do
  port_free "$port" || { log "ERROR: port $port is already in use; set PORT, METRICS_PORT or SINK_PORT"; exit 1; }
done

node --import tsx "$BENCH_DIR/otlp-sink.ts" --port "$SINK_PORT" --stats-file "$OUT_DIR/sink.json" >"$OUT_DIR/sink.log" 2>&1 &
SINK_PID=$!

segment=0
for mode in $ORDER; do
  segment=$((segment + 1))
  tag="s$segment-$mode"
  # shellcheck disable=SC2046 # one VAR=value per word
  start_fstore "$ADDR" "$SERVER_PROCESSES" "$OUT_DIR/server-$tag.log" $(mode_env "$mode")
  if (( segment == 1 )); then
    log "seeding $ROWS entities per view"
    tsnode "$BENCH_DIR/seed.ts" --addr "$ADDR" --rows "$ROWS" | tee "$OUT_DIR/seed.json"
  fi
  [[ "$mode" == off ]] || start_scraper "$OUT_DIR/scrapes-$tag.txt"
  warm_up "$ADDR"
  for cell in $CELLS; do
    batch="${cell%x*}"; features="${cell#*x}"
    log "$tag, closed loop b${batch}xf${features}: $VUS VUs, $DURATION"
    closed_loop "$ADDR" "$SERVER_PID" "$tag-b${batch}xf${features}-max" "b${batch}xf${features}" "$batch" "$features" "$DURATION"
  done
  for scenario in $OPEN; do
    shape="${scenario%@*}"; rate="${scenario#*@}"; batch="${shape%x*}"; features="${shape#*x}"
    open_loop "$ADDR" "$tag-b${batch}xf${features}-rate$rate.json" "$DURATION" "b${batch}xf${features}" "$batch" "$features" "$rate"
  done
  if [[ -n "$SCRAPER_PID" ]]; then kill "$SCRAPER_PID" 2>/dev/null || true; wait "$SCRAPER_PID" 2>/dev/null || true; SCRAPER_PID=""; fi
  stop_pid "$SERVER_PID" "fstore serve"
  SERVER_PID=""
  if grep -qE '"level":(40|50|60)' "$OUT_DIR/server-$tag.log" 2>/dev/null; then
    log "the server logged warnings or errors in $tag: see $OUT_DIR/server-$tag.log"
  fi
done
sleep 2 # the last span batches reach the sink
stop_pid "$SINK_PID" "otlp-sink"
SINK_PID=""

json_list() { local out; out="$(printf '"%s",' "$@")"; echo "[${out%,}]"; }
# shellcheck disable=SC2086 # one word per entry
cat >"$OUT_DIR/meta.json" <<JSON
{
  "date": $(json_str "$(date -u)"),
  "command": $(json_str "bash bench/run-observability.sh  (ORDER=\"$ORDER\" CELLS=\"$CELLS\" OPEN=\"$OPEN\" VUS=$VUS DURATION=$DURATION OPEN_VUS=$OPEN_VUS ROWS=$ROWS SERVER_PROCESSES=$SERVER_PROCESSES SCRAPE_INTERVAL=$SCRAPE_INTERVAL)"),
  $(machine_json)
  "serverProcesses": $SERVER_PROCESSES,
  "vus": $VUS,
  "duration": "$DURATION",
  "openVus": $OPEN_VUS,
  "scrapeInterval": $SCRAPE_INTERVAL,
  "order": $(json_list $ORDER),
  "cells": $(json_list $CELLS),
  "open": $(json_list $OPEN)
}
JSON

node "$BENCH_DIR/observability-report.mjs" "$OUT_DIR" >"$REPORT"
cat "$REPORT"
log "report: $REPORT"
