# Shell helpers of the gRPC benchmarks (bench/run-online.sh, bench/run-observability.sh): process
# CPU accounting, waiting for a quiet machine, starting and stopping `fstore serve`, k6 closed and
# open loops. Sourced, not run. Expects BENCH_DIR, REPO_ROOT, OUT_DIR, ROWS, VUS, OPEN_VUS,
# REDIS_PID (for closed_loop), QUIET_THRESHOLD, QUIET_MAX_WAIT, QUIET_BUDGET and LOG_TAG.

# Where the benchmark data lives: the test servers of scripts/servers.sh, Redis db 1 under a key
# prefix of its own, a registry schema of its own.
REDIS_PORT="${FSTORE_TEST_REDIS_PORT:-6391}"
PG_PORT="${FSTORE_TEST_PG_PORT:-5439}"
REDIS_DB=1
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/$REDIS_DB"
POSTGRES_URL="postgres://postgres@127.0.0.1:$PG_PORT/fstore_test"
KEY_PREFIX="bench:"
SCHEMA="fstore_bench"
K6="$BENCH_DIR/bin/k6"

delete_bench_keys() {
  log "deleting the benchmark keys ($KEY_PREFIX* in Redis db $REDIS_DB)"
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" -n "$REDIS_DB" --scan --pattern "${KEY_PREFIX}*" \
    | xargs -r -n 1000 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" -n "$REDIS_DB" UNLINK >/dev/null || true
}

log() { printf '[%s %s] %s\n' "$LOG_TAG" "$(date -u +%H:%M:%S)" "$*" >&2; }
tsnode() { node --import tsx "$@"; }

# Stops a server started by this script (its worker processes are its children) and waits.
stop_pid() { # stop_pid <pid> <name>
  local pid="$1" name="$2"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
  log "stopping $name (pid $pid)"
  local children; children="$(pgrep -P "$pid" 2>/dev/null | tr '\n' ' ' || true)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name did not stop within 15 s; killing it"
    # shellcheck disable=SC2086 # one word per child pid
    kill -KILL "$pid" $children 2>/dev/null || true
  fi
}

# CPU seconds (user + system) of a process and its children (the serving processes).
cpu_of_tree() {
  local root="$1" total=0 pid ticks
  [[ -n "$root" ]] || { echo 0; return; }
  for pid in "$root" $(pgrep -P "$root" 2>/dev/null || true); do
    if [[ -r "/proc/$pid/stat" ]]; then
      # utime and stime: fields 14 and 15, i.e. 12 and 13 after the ')' that ends the command name
      ticks="$(sed -E 's/^.*\) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}')" || ticks=0
      total=$((total + ${ticks:-0}))
    fi
  done
  awk -v t="$total" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'
}
# CPU seconds of the whole machine (all cores), from /proc/stat: "<user+nice+system> <irq+softirq> <steal>".
machine_cpu() {
  awk -v hz="$(getconf CLK_TCK)" '/^cpu / { printf "%.2f %.2f %.2f", ($2 + $3 + $4) / hz, ($7 + $8) / hz, $9 / hz }' /proc/stat
}

# Waits (bounded) until the rest of the machine is quiet: other users' test runs on these 2 cores
# would otherwise be measured as FStore's slowness. Gives up after QUIET_MAX_WAIT seconds per
# call and QUIET_BUDGET seconds per run, and logs how busy the machine was.
QUIET_SPENT=0
wait_quiet() { # wait_quiet <label>
  local label="$1" waited=0 busy
  while :; do
    local m0 m1; m0="$(machine_cpu)"; sleep 1; m1="$(machine_cpu)"
    busy="$(awk -v a="${m0%% *}" -v b="${m1%% *}" 'BEGIN { printf "%.2f", b - a }')"
    if awk -v b="$busy" -v t="$QUIET_THRESHOLD" 'BEGIN { exit !(b <= t) }'; then
      (( waited == 0 )) || log "machine quiet after ${waited} s (busy $busy cores) before $label"
      return 0
    fi
    if (( waited >= QUIET_MAX_WAIT || QUIET_SPENT >= QUIET_BUDGET )); then
      log "WARNING: machine still busy ($busy cores used by other processes) before $label; measuring anyway"
      return 0
    fi
    (( waited == 0 )) && log "machine busy ($busy cores used by other processes); waiting before $label"
    waited=$((waited + 1)); QUIET_SPENT=$((QUIET_SPENT + 1))
  done
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# k6 closed loop with CPU accounting: closed_loop <addr> <server pid> <out prefix> <cell> <batch> <features> <duration> [k6 -e...]
closed_loop() {
  local addr="$1" server="$2" prefix="$3" cell="$4" batch="$5" features="$6" duration="$7"; shift 7
  local s0 r0 m0 t0 s1 r1 m1 t1 k6_user k6_sys
  wait_quiet "$prefix"
  s0="$(cpu_of_tree "$server")"; r0="$(cpu_of_tree "$REDIS_PID")"; m0="$(machine_cpu)"; t0="$(date +%s.%N)"
  /usr/bin/time -f '%U %S' -o "$OUT_DIR/$prefix.time" \
    "$K6" run --quiet --no-color --no-usage-report \
    -e ADDR="$addr" -e ID_MAX="$ROWS" -e SUMMARY_FILE="$OUT_DIR/$prefix.json" \
    -e BATCH="$batch" -e FEATURES="$features" -e VUS="$VUS" -e DURATION="$duration" -e CELL="$cell" "$@" \
    "$BENCH_DIR/online-lookup.js" || log "k6 failed for $prefix (exit $?)"
  t1="$(date +%s.%N)"; m1="$(machine_cpu)"; r1="$(cpu_of_tree "$REDIS_PID")"; s1="$(cpu_of_tree "$server")"
  read -r k6_user k6_sys < <(tail -n 1 "$OUT_DIR/$prefix.time")
  awk -v s0="$s0" -v s1="$s1" -v r0="$r0" -v r1="$r1" -v m0="$m0" -v m1="$m1" -v ku="$k6_user" -v ks="$k6_sys" \
    -v t0="$t0" -v t1="$t1" 'BEGIN {
      split(m0, a, " "); split(m1, b, " ");
      server = s1 - s0; redis = r1 - r0; k6 = ku + ks; procs = b[1] - a[1];
      other = procs - server - redis - k6; if (other < 0) other = 0;
      printf "{\"wall_s\": %.2f, \"server_cpu_s\": %.2f, \"k6_cpu_s\": %.2f, \"redis_cpu_s\": %.2f, \"other_cpu_s\": %.2f, \"irq_cpu_s\": %.2f, \"steal_s\": %.2f}\n",
        t1 - t0, server, k6, redis, other, b[2] - a[2], b[3] - a[3] }' >"$OUT_DIR/cpu-$prefix.json"
}

# k6 open model (constant arrival rate): open_loop <addr> <out file> <duration> <cell> <batch> <features> <rate> [k6 -e...]
open_loop() {
  local addr="$1" file="$2" duration="$3" cell="$4" batch="$5" features="$6" rate="$7"; shift 7
  wait_quiet "$file"
  log "open model $cell at $rate req/s, $duration -> $file"
  "$K6" run --quiet --no-color --no-usage-report -e ADDR="$addr" -e ID_MAX="$ROWS" -e SUMMARY_FILE="$OUT_DIR/$file" \
    -e BATCH="$batch" -e FEATURES="$features" -e RATE="$rate" -e VUS="$OPEN_VUS" -e MAX_VUS=64 \
    -e DURATION="$duration" -e CELL="$cell" -e SAMPLE_EVERY=100 "$@" "$BENCH_DIR/online-lookup.js" \
    || log "k6 failed for $file (exit $?)"
}

# Starts `fstore serve` in the background (SERVER_PID) on the benchmark data (REDIS_URL,
# POSTGRES_URL, KEY_PREFIX, SCHEMA) with extra environment, and waits for grpc.health.v1
# SERVING: start_fstore <addr> <processes> <log> [VAR=value...]
start_fstore() {
  local addr="$1" processes="$2" server_log="$3"; shift 3
  log "starting fstore serve --processes $processes on $addr${*:+ ($*)}"
  env FSTORE_LOG_LEVEL=warn FSTORE_REDIS_KEY_PREFIX="$KEY_PREFIX" FSTORE_POSTGRES_SCHEMA="$SCHEMA" "$@" \
    node "$REPO_ROOT/bin/fstore.js" serve --host "${addr%:*}" --port "${addr##*:}" --processes "$processes" \
    --redis-url "$REDIS_URL" --postgres-url "$POSTGRES_URL" >"$server_log" 2>&1 &
  SERVER_PID=$!
  if ! tsnode "$BENCH_DIR/wait-healthy.ts" "$addr" 60; then
    log "server log:"; tail -n 40 "$server_log" >&2
    return 1
  fi
}

# JIT, connections, registry cache: 5 s of k6 load that is not recorded. warm_up <addr> [k6 -e...]
warm_up() {
  local addr="$1"; shift
  log "warm-up (5 s)"
  "$K6" run --quiet --no-color --no-usage-report -e ADDR="$addr" -e ID_MAX="$ROWS" \
    -e SUMMARY_FILE="$OUT_DIR/warmup.json" -e BATCH=10 -e FEATURES=10 -e VUS=8 -e DURATION=5s "$@" \
    "$BENCH_DIR/online-lookup.js" >/dev/null
}

json_str() { node -e 'process.stdout.write(JSON.stringify(process.argv[1]))' "$1"; }

# The machine, software and load fields of a run's meta.json (one JSON fragment, ending in a comma).
# Expects LOAD_BEFORE (the load average when the run began) and QUIET_SPENT.
machine_json() {
  cat <<JSON
"nproc": $(nproc),
  "cpu": $(json_str "$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)"),
  "memory": $(json_str "$(free -h | awk '/^Mem:/ {print $2}')"),
  "kernel": $(json_str "$(uname -r)"),
  "node": $(json_str "$(node --version)"),
  "redis": $(json_str "$(redis-server --version | awk '{print $1, $2, $3}')"),
  "postgres": $(json_str "$(psql --version)"),
  "k6": $(json_str "$("$K6" version | head -n 1)"),
  "loadBefore": $(json_str "$LOAD_BEFORE"),
  "loadAfter": $(json_str "$(cut -d' ' -f1-3 /proc/loadavg)"),
  "quietWaitSeconds": $QUIET_SPENT,
JSON
}
