#!/usr/bin/env bash
# Start/stop the real servers the test suite talks to (DESIGN.md §7: no Docker engine,
# so Redis and PostgreSQL come from the Debian packages, Apache Kafka from Maven Central's jars
# on the machine's JDK, all on loopback).
#
# Usage: scripts/servers.sh start|stop|status|env
#                           start-redis|stop-redis        (the single Redis only)
#                           start-postgres|stop-postgres  (PostgreSQL only)
#                           start-kafka|stop-kafka        (the Kafka broker only)
#
# Environment (all optional):
#   FSTORE_RUN_DIR             runtime dir for data, logs, pid files (default: <repo>/.run)
#   FSTORE_TEST_REDIS_PORT     single Redis port              (default: 6391)
#   FSTORE_TEST_CLUSTER_PORTS  Redis Cluster master ports     (default: "7101 7102 7103")
#   FSTORE_TEST_PG_PORT        PostgreSQL port                (default: 5439)
#   FSTORE_TEST_KAFKA_PORT     Kafka broker (PLAINTEXT) port  (default: 9192)
#   FSTORE_TEST_KAFKA_CONTROLLER_PORT  its KRaft controller port (default: 9193)
#   FSTORE_KAFKA_CACHE         where the Kafka jars are kept, one folder per version
#                              (default: ${XDG_CACHE_HOME:-$HOME/.cache}/fstore/kafka)
#   FSTORE_SERVERS_TIMEOUT     seconds for every wait loop    (default: 30)
#
# Must work unattended (CI=true, no stdin, no TTY) as root on a fresh Debian 12, and also
# as a normal user when the packages are already installed.
set -euo pipefail

# Repo root from the script's own location, so it works from any cwd.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="${FSTORE_RUN_DIR:-$REPO_ROOT/.run}"
REDIS_PORT="${FSTORE_TEST_REDIS_PORT:-6391}"
read -r -a CLUSTER_PORTS <<<"${FSTORE_TEST_CLUSTER_PORTS:-7101 7102 7103}"
PG_PORT="${FSTORE_TEST_PG_PORT:-5439}"
KAFKA_PORT="${FSTORE_TEST_KAFKA_PORT:-9192}"
KAFKA_CONTROLLER_PORT="${FSTORE_TEST_KAFKA_CONTROLLER_PORT:-9193}"
TIMEOUT="${FSTORE_SERVERS_TIMEOUT:-30}"
HOST=127.0.0.1
PG_DB=fstore_test
PG_USER=postgres
# Bound psql/createdb connection attempts too (libpq waits indefinitely by default).
export PGCONNECT_TIMEOUT=5
# Apache Kafka: the latest 3.9 patch on Maven Central, with the slf4j binding and reload4j
# versions that Kafka 3.9's own distribution ships (its libs/ folder).
KAFKA_VERSION=3.9.2
SLF4J_VERSION=1.7.36
RELOAD4J_VERSION=1.2.25
# The jars are fetched once per version and shared by every checkout and run dir of this user.
KAFKA_CACHE="${FSTORE_KAFKA_CACHE:-${XDG_CACHE_HOME:-${HOME:-$REPO_ROOT}/.cache}/fstore/kafka}"
KAFKA_HOME="$KAFKA_CACHE/$KAFKA_VERSION"
# A Maven Central download that hangs must not eat CI's time; the first fetch takes ~45 s.
KAFKA_FETCH_TIMEOUT=900

# Ports end up in URLs, file names and config files: accept digits only.
for _p in "$REDIS_PORT" "${CLUSTER_PORTS[@]}" "$PG_PORT" "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
  [[ "$_p" =~ ^[0-9]+$ ]] || { echo "[servers] ERROR: invalid port '$_p'" >&2; exit 2; }
done
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || { echo "[servers] ERROR: invalid FSTORE_SERVERS_TIMEOUT '$TIMEOUT'" >&2; exit 2; }

LOG_DIR="$RUN_DIR/logs"
REDIS_DIR="$RUN_DIR/redis"
CLUSTER_DIR="$RUN_DIR/redis-cluster"
PG_DIR="$RUN_DIR/postgres"
PG_LOG="$LOG_DIR/postgres.log"
# As root, PostgreSQL runs as the postgres user, which must reach its files through every parent
# directory. A checkout inside a private directory (mktemp -d makes it 0700) cannot offer that, so
# PostgreSQL's files then live in a directory of their own under /var/tmp, named after the run dir.
# Called again after the packages are installed (the postgres user may only exist then).
pg_locate() {
  if [[ $(id -u) -eq 0 ]] && id postgres >/dev/null 2>&1; then
    mkdir -p "$RUN_DIR"
    if ! runuser -u postgres -- test -x "$RUN_DIR"; then
      PG_DIR="/var/tmp/fstore-postgres-$(printf '%s' "$RUN_DIR" | md5sum | cut -c1-12)"
      PG_LOG="$PG_DIR/postgres.log"
    fi
  fi
  PG_DATA="$PG_DIR/data"
  # PostgreSQL needs write access to its socket dir; the run dir itself stays root-owned,
  # so the sockets live in a postgres-owned subdirectory of it.
  PG_SOCKET_DIR="$PG_DIR/socket"
}
pg_locate

log() { printf '[servers] %s\n' "$*" >&2; }
die() { printf '[servers] ERROR: %s\n' "$*" >&2; exit 1; }

# Print the tail of a log file to stderr (used in every timeout message).
log_tail() {
  local file="$1"
  if [[ -s "$file" ]]; then
    printf '[servers] --- last lines of %s ---\n' "$file" >&2
    tail -n 30 "$file" >&2 || true
    printf '[servers] --- end of %s ---\n' "$file" >&2
  else
    printf '[servers] (log %s is empty or missing)\n' "$file" >&2
  fi
}

is_root() { [[ "$(id -u)" -eq 0 ]]; }

# ---------------------------------------------------------------------------------------
# Packages
# ---------------------------------------------------------------------------------------

pkg_installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

apt_install() {
  local -a install_cmd=(apt-get install -y --no-install-recommends "$@")
  local policy_created=0
  # Debian postinst scripts would start the system redis (6379) and the "15/main" cluster
  # (5432) unless a policy-rc.d forbids it. Docker-style images ship one; if this machine
  # does not, add a temporary one so apt starts nothing we would have to clean up.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    policy_created=1
  fi
  local rc=0
  # Try without `apt-get update` first (fast when lists are fresh); update only on failure.
  DEBIAN_FRONTEND=noninteractive "${install_cmd[@]}" </dev/null || rc=$?
  if [[ $rc -ne 0 ]]; then
    log "apt-get install failed (rc=$rc); running apt-get update and retrying"
    rc=0
    DEBIAN_FRONTEND=noninteractive apt-get update </dev/null || rc=$?
    [[ $rc -eq 0 ]] && { DEBIAN_FRONTEND=noninteractive "${install_cmd[@]}" </dev/null || rc=$?; }
  fi
  [[ $policy_created -eq 1 ]] && rm -f /usr/sbin/policy-rc.d
  return "$rc"
}

ensure_packages() {
  local -a missing=()
  local p
  for p in redis-server redis-tools postgresql; do
    pkg_installed "$p" || missing+=("$p")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    is_root || die "missing Debian packages: ${missing[*]} (run as root so they can be installed)"
    log "installing Debian packages: ${missing[*]}"
    apt_install "${missing[@]}" || die "apt-get install ${missing[*]} failed"
  fi
  command -v redis-server >/dev/null || die "redis-server not found on PATH"
  command -v redis-cli >/dev/null || die "redis-cli not found on PATH"
}

pg_bin_dir() {
  local d
  # shellcheck disable=SC2012 # plain version-named dirs; sort -V picks the newest major
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
  [[ -n "$d" && -x "$d/pg_ctl" ]] || die "no PostgreSQL binaries under /usr/lib/postgresql/*/bin"
  printf '%s\n' "$d"
}

# ---------------------------------------------------------------------------------------
# Helpers for Redis processes we started (identified by our own pid files only)
# ---------------------------------------------------------------------------------------

# Succeeds if the process exists and is not a zombie. Our daemons are re-parented to pid 1,
# which here may reap them late, and kill -0 succeeds on a zombie.
proc_running() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state="$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null || true)"
  [[ -n "$state" && "$state" != "Z" && "$state" != "X" ]]
}

# Succeeds if the pid file names a live redis-server process.
pid_alive() {
  local pidfile="$1" pid
  [[ -f "$pidfile" ]] || return 1
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  proc_running "$pid" || return 1
  # Guard against pid reuse after a crash/reboot.
  grep -q '^redis-server' "/proc/$pid/comm" 2>/dev/null
}

# redis-cli waits forever for a reply; a hung or foreign listener must not hang us.
rcli() { timeout 3 redis-cli "$@" </dev/null; }

# Succeeds if something accepts TCP connections on the port (bash's /dev/tcp, no nc needed).
port_in_use() { timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null; }

redis_ping() { [[ "$(rcli -h "$HOST" -p "$1" ping 2>/dev/null || true)" == "PONG" ]]; }

wait_redis_up() {
  local port="$1" logfile="$2" deadline=$((SECONDS + TIMEOUT))
  while ((SECONDS < deadline)); do
    redis_ping "$port" && return 0
    sleep 0.1
  done
  log_tail "$logfile"
  die "Redis on $HOST:$port did not answer PING within ${TIMEOUT}s"
}

# Start one redis-server daemon unless ours is already running.
#   $1 port, $2 data dir, $3 pid file, $4 log file, rest: extra redis-server args
start_redis_instance() {
  local port="$1" dir="$2" pidfile="$3" logfile="$4"
  shift 4
  if pid_alive "$pidfile"; then
    wait_redis_up "$port" "$logfile"
    return 0
  fi
  rm -f "$pidfile"
  # Something else (not ours) on the port would make tests talk to the wrong server.
  if port_in_use "$port"; then
    die "port $HOST:$port is already in use by a process we did not start (no live pid in $pidfile); stop it or choose another port"
  fi
  mkdir -p "$dir" "$(dirname "$logfile")"
  # No persistence: test data is disposable and fsync-free runs are faster.
  redis-server --bind "$HOST" --port "$port" --dir "$dir" \
    --daemonize yes --pidfile "$pidfile" --logfile "$logfile" \
    --save '' --appendonly no "$@" </dev/null ||
    { log_tail "$logfile"; die "redis-server on port $port failed to start"; }
  wait_redis_up "$port" "$logfile"
  log "redis on $HOST:$port started"
}

stop_redis_instance() {
  local port="$1" pidfile="$2" logfile="$3" pid deadline=$((SECONDS + TIMEOUT))
  if ! pid_alive "$pidfile"; then
    rm -f "$pidfile"
    return 0
  fi
  pid="$(cat "$pidfile")"
  rcli -h "$HOST" -p "$port" shutdown nosave >/dev/null 2>&1 || true
  while ((SECONDS < deadline)); do
    proc_running "$pid" || { rm -f "$pidfile"; log "redis on $HOST:$port stopped"; return 0; }
    sleep 0.1
  done
  # SHUTDOWN did not work (hung server?): terminate the process we started, by its pid.
  log "redis on port $port ignored SHUTDOWN for ${TIMEOUT}s; sending SIGTERM/SIGKILL to pid $pid"
  log_tail "$logfile"
  kill "$pid" 2>/dev/null || true
  sleep 2
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

# ---------------------------------------------------------------------------------------
# Single Redis
# ---------------------------------------------------------------------------------------

redis_pidfile() { printf '%s/redis-%s.pid\n' "$RUN_DIR" "$REDIS_PORT"; }
redis_logfile() { printf '%s/redis-%s.log\n' "$LOG_DIR" "$REDIS_PORT"; }

start_redis() {
  start_redis_instance "$REDIS_PORT" "$REDIS_DIR" "$(redis_pidfile)" "$(redis_logfile)"
}

stop_redis() {
  stop_redis_instance "$REDIS_PORT" "$(redis_pidfile)" "$(redis_logfile)"
}

# ---------------------------------------------------------------------------------------
# Redis Cluster (masters only)
# ---------------------------------------------------------------------------------------

cluster_pidfile() { printf '%s/redis-cluster-%s.pid\n' "$RUN_DIR" "$1"; }
cluster_logfile() { printf '%s/redis-cluster-%s.log\n' "$LOG_DIR" "$1"; }

cluster_field() { # $1 port, $2 field of CLUSTER INFO
  rcli -h "$HOST" -p "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"
}

start_cluster_nodes() {
  local port
  for port in "${CLUSTER_PORTS[@]}"; do
    # Each node also listens on its cluster bus port, port + 10000.
    if ! pid_alive "$(cluster_pidfile "$port")" && port_in_use $((port + 10000)); then
      die "cluster bus port $HOST:$((port + 10000)) (for node $port) is already in use by another process"
    fi
    start_redis_instance "$port" "$CLUSTER_DIR/$port" "$(cluster_pidfile "$port")" \
      "$(cluster_logfile "$port")" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000
  done
}

stop_cluster() {
  local port
  for port in "${CLUSTER_PORTS[@]}"; do
    stop_redis_instance "$port" "$(cluster_pidfile "$port")" "$(cluster_logfile "$port")"
  done
}

# "formed": every node knows all nodes and all 16384 slots are assigned (it may still be
# converging to cluster_state:ok right after a restart).
cluster_formed() {
  local port n=${#CLUSTER_PORTS[@]}
  for port in "${CLUSTER_PORTS[@]}"; do
    [[ "$(cluster_field "$port" cluster_known_nodes)" == "$n" ]] || return 1
    [[ "$(cluster_field "$port" cluster_slots_assigned)" == "16384" ]] || return 1
  done
}

# "pristine": every node is alone with no slots, i.e. ready for --cluster create.
cluster_pristine() {
  local port
  for port in "${CLUSTER_PORTS[@]}"; do
    [[ "$(cluster_field "$port" cluster_known_nodes)" == "1" ]] || return 1
    [[ "$(cluster_field "$port" cluster_slots_assigned)" == "0" ]] || return 1
  done
}

wait_cluster_ok() {
  local port all_ok deadline=$((SECONDS + TIMEOUT))
  while ((SECONDS < deadline)); do
    all_ok=1
    for port in "${CLUSTER_PORTS[@]}"; do
      [[ "$(cluster_field "$port" cluster_state)" == "ok" ]] || { all_ok=0; break; }
    done
    [[ $all_ok -eq 1 ]] && return 0
    sleep 0.1
  done
  for port in "${CLUSTER_PORTS[@]}"; do
    log "cluster info on port $port:"
    rcli -h "$HOST" -p "$port" cluster info 2>&1 | tr -d '\r' | head -8 >&2 || true
    log_tail "$(cluster_logfile "$port")"
  done
  die "Redis Cluster on ports ${CLUSTER_PORTS[*]} did not reach cluster_state:ok within ${TIMEOUT}s"
}

create_cluster() {
  local -a addrs=()
  local port
  for port in "${CLUSTER_PORTS[@]}"; do addrs+=("$HOST:$port"); done
  log "creating Redis Cluster ${addrs[*]}"
  # --cluster-yes answers the interactive prompt; stdin is closed in CI anyway.
  timeout $((TIMEOUT + 30)) redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes </dev/null \
    >"$LOG_DIR/redis-cluster-create.log" 2>&1 ||
    { log_tail "$LOG_DIR/redis-cluster-create.log"; die "redis-cli --cluster create failed"; }
}

start_cluster() {
  [[ ${#CLUSTER_PORTS[@]} -ge 3 ]] || die "Redis Cluster needs at least 3 masters (FSTORE_TEST_CLUSTER_PORTS)"
  start_cluster_nodes
  if cluster_formed; then
    : # existing cluster from nodes.conf: the nodes re-join on their own
  elif cluster_pristine; then
    create_cluster
  else
    # Half-formed state (e.g. a node's dir was deleted, or create was interrupted). The
    # cluster holds no persisted data, so wipe the nodes and build it again.
    log "Redis Cluster state is inconsistent; recreating it from scratch"
    stop_cluster
    rm -rf "$CLUSTER_DIR"
    start_cluster_nodes
    create_cluster
  fi
  wait_cluster_ok
  log "redis cluster on ports ${CLUSTER_PORTS[*]} is ok"
}

# ---------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------

# initdb/pg_ctl refuse to run as root, so run them as postgres when we are root.
as_pg() {
  if is_root; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg_running() {
  [[ -f "$PG_DATA/PG_VERSION" ]] || return 1
  as_pg "$(pg_bin_dir)/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1
}

pg_prepare_dirs() {
  mkdir -p "$PG_DIR" "$PG_SOCKET_DIR" "$LOG_DIR"
  touch "$PG_LOG"
  if is_root; then
    id postgres >/dev/null 2>&1 || die "user postgres does not exist (is the postgresql package installed?)"
    chown postgres: "$PG_DIR" "$PG_SOCKET_DIR" "$PG_LOG"
    [[ -d "$PG_DATA" ]] && chown -R postgres: "$PG_DATA"
    # The postgres user must be able to reach the run dir through every parent directory.
    runuser -u postgres -- test -w "$PG_DIR" ||
      die "user postgres cannot write $PG_DIR (a parent of $RUN_DIR is not searchable by others?); set FSTORE_RUN_DIR elsewhere"
  fi
}

pg_initdb() {
  local bin="$1"
  log "initdb $PG_DATA"
  rm -rf "$PG_DATA"
  as_pg "$bin/initdb" -D "$PG_DATA" --auth=trust --username="$PG_USER" -E UTF8 --locale=C \
    --no-sync </dev/null >"$LOG_DIR/initdb.log" 2>&1 ||
    { log_tail "$LOG_DIR/initdb.log"; die "initdb failed"; }
  # Our settings live in their own file, rewritten on every start (ports may change).
  printf "\ninclude_if_exists = 'fstore-test.conf'\n" | as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null
}

pg_write_conf() {
  # Tuned for disposable test data: durability off, loopback only.
  as_pg tee "$PG_DATA/fstore-test.conf" >/dev/null <<EOF
# Written by scripts/servers.sh on every start; do not edit.
port = $PG_PORT
listen_addresses = '$HOST'
unix_socket_directories = '$PG_SOCKET_DIR'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
}

pg_isready_port() {
  "$(pg_bin_dir)/pg_isready" -q -h "$HOST" -p "$PG_PORT" -t 1 >/dev/null 2>&1
}

start_postgres() {
  local bin deadline
  bin="$(pg_bin_dir)"
  if pg_running; then
    :
  else
    if port_in_use "$PG_PORT"; then
      die "port $HOST:$PG_PORT is already in use by a process we did not start ($PG_DATA is not running); stop it or set FSTORE_TEST_PG_PORT"
    fi
    pg_prepare_dirs
    [[ -f "$PG_DATA/PG_VERSION" ]] || pg_initdb "$bin"
    pg_write_conf
    # -w waits until it accepts connections; -t bounds that wait.
    as_pg "$bin/pg_ctl" start -w -t "$TIMEOUT" -D "$PG_DATA" -l "$PG_LOG" </dev/null >/dev/null 2>&1 ||
      { log_tail "$PG_LOG"; die "PostgreSQL on $HOST:$PG_PORT failed to start within ${TIMEOUT}s"; }
    log "postgres on $HOST:$PG_PORT started"
  fi
  deadline=$((SECONDS + TIMEOUT))
  while ((SECONDS < deadline)); do
    pg_isready_port && break
    sleep 0.1
  done
  pg_isready_port || { log_tail "$PG_LOG"; die "PostgreSQL on $HOST:$PG_PORT not ready within ${TIMEOUT}s"; }
  # Create the test database once (TCP + trust auth works for any OS user).
  local exists
  exists="$("$bin/psql" -h "$HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -XtAq \
    -c "select 1 from pg_database where datname = '$PG_DB'" </dev/null)" ||
    { log_tail "$PG_LOG"; die "cannot query PostgreSQL on $HOST:$PG_PORT"; }
  if [[ "$exists" != "1" ]]; then
    "$bin/createdb" -h "$HOST" -p "$PG_PORT" -U "$PG_USER" "$PG_DB" </dev/null ||
      die "createdb $PG_DB failed"
    log "database $PG_DB created"
  fi
}

stop_postgres() {
  [[ -f "$PG_DATA/PG_VERSION" ]] || return 0
  local bin
  bin="$(pg_bin_dir)"
  if pg_running; then
    as_pg "$bin/pg_ctl" stop -m fast -w -t "$TIMEOUT" -D "$PG_DATA" </dev/null >/dev/null 2>&1 ||
      { log_tail "$PG_LOG"; die "PostgreSQL did not stop within ${TIMEOUT}s"; }
    log "postgres on $HOST:$PG_PORT stopped"
  fi
}

# ---------------------------------------------------------------------------------------
# Apache Kafka (single-node KRaft broker on the JDK; config templates in scripts/kafka/)
# ---------------------------------------------------------------------------------------

kafka_pidfile() { printf '%s/kafka-%s.pid\n' "$RUN_DIR" "$KAFKA_PORT"; }
kafka_logfile() { printf '%s/kafka-%s.log\n' "$LOG_DIR" "$KAFKA_PORT"; }
# Where this start's lines begin in the log (a byte offset): readiness is read from there on.
kafka_logpos_file() { printf '%s/kafka-%s.logpos\n' "$RUN_DIR" "$KAFKA_PORT"; }
# server.properties and the data (log.dirs) of the broker on this port.
kafka_dir() { printf '%s/kafka-%s\n' "$RUN_DIR" "$KAFKA_PORT"; }

java_bin() { printf '%s\n' "${JAVA_HOME:+$JAVA_HOME/bin/}java"; }

# The JDK runs the broker and Maven fetches it; both are on this kind of machine, and as root
# a missing one is installed from Debian's packages.
ensure_java() {
  local need_maven="$1" major
  local -a missing=()
  command -v "$(java_bin)" >/dev/null || missing+=(openjdk-17-jre-headless)
  [[ "$need_maven" -eq 1 ]] && ! command -v mvn >/dev/null && missing+=(maven)
  if [[ ${#missing[@]} -gt 0 ]]; then
    is_root || die "Kafka needs java (JDK 11 or newer) and, for the first fetch, mvn on PATH; missing Debian packages: ${missing[*]}"
    log "installing Debian packages: ${missing[*]}"
    apt_install "${missing[@]}" || die "apt-get install ${missing[*]} failed"
  fi
  # Kafka 3.9 runs on Java 11 to 23 (8 is deprecated).
  major="$("$(java_bin)" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p')"
  [[ "$major" =~ ^[0-9]+$ && "$major" -ge 11 ]] || die "Kafka $KAFKA_VERSION needs Java 11 or newer; $(java_bin) is '${major:-unknown}'"
}

# Fetch kafka_2.13 and its runtime dependencies once into $KAFKA_HOME/libs, with a pom of our
# own. The `complete` marker is written last, so an interrupted fetch is redone, not half-used.
kafka_fetch() {
  [[ -f "$KAFKA_HOME/complete" ]] && return 0
  mkdir -p "$KAFKA_HOME"
  local lock
  # Throwaway brokers (test/support/throwaway-kafka.ts) may start in parallel: fetch once.
  exec {lock}>"$KAFKA_HOME/.lock"
  flock -w "$KAFKA_FETCH_TIMEOUT" "$lock" || die "another fetch of Kafka into $KAFKA_HOME did not finish within ${KAFKA_FETCH_TIMEOUT}s"
  if [[ ! -f "$KAFKA_HOME/complete" ]]; then
    ensure_java 1
    log "fetching Apache Kafka $KAFKA_VERSION from Maven Central into $KAFKA_HOME (once per version)"
    cat >"$KAFKA_HOME/pom.xml" <<POM
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by scripts/servers.sh: the jars of a Kafka broker, copied to libs/. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>fstore.test</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-reload4j</artifactId>
      <version>$SLF4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>ch.qos.reload4j</groupId>
      <artifactId>reload4j</artifactId>
      <version>$RELOAD4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
POM
    rm -rf "$KAFKA_HOME/libs" "$KAFKA_HOME/libs.partial"
    # --strict-checksums: a corrupt download fails here, not as a ClassNotFoundException later.
    timeout "$KAFKA_FETCH_TIMEOUT" mvn -B -ntp --strict-checksums -f "$KAFKA_HOME/pom.xml" \
      org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$KAFKA_HOME/libs.partial" \
      </dev/null >"$KAFKA_HOME/fetch.log" 2>&1 ||
      { log_tail "$KAFKA_HOME/fetch.log"; die "fetching Kafka $KAFKA_VERSION with Maven failed"; }
    [[ -f "$KAFKA_HOME/libs.partial/kafka_2.13-$KAFKA_VERSION.jar" ]] ||
      { log_tail "$KAFKA_HOME/fetch.log"; die "Maven finished but kafka_2.13-$KAFKA_VERSION.jar is not in $KAFKA_HOME/libs.partial"; }
    mv "$KAFKA_HOME/libs.partial" "$KAFKA_HOME/libs"
    date -u +%FT%TZ >"$KAFKA_HOME/complete"
    log "Kafka $KAFKA_VERSION: $(find "$KAFKA_HOME/libs" -name '*.jar' | wc -l) jars in $KAFKA_HOME/libs"
  fi
  exec {lock}>&-
}

# A Kafka main class on the cached jars, logging with our log4j config (to stdout).
KAFKA_JAVA_OPTS=(-Djava.awt.headless=true -Dlog4j.configuration="file:$REPO_ROOT/scripts/kafka/log4j.properties"
  -cp "$KAFKA_HOME/libs/*")
kafka_java() { "$(java_bin)" "${KAFKA_JAVA_OPTS[@]}" "$@"; }

# Succeeds if the pid file names a live broker started with this run dir's server.properties.
kafka_alive() {
  local pidfile pid
  pidfile="$(kafka_pidfile)"
  [[ -f "$pidfile" ]] || return 1
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  proc_running "$pid" || return 1
  # Guard against pid reuse after a crash/reboot.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -F "kafka.Kafka $(kafka_dir)/server.properties" >/dev/null
}

# The broker logs "Kafka Server started" once it is registered with its controller, unfenced
# and serving requests on its listeners.
kafka_started() {
  local pos
  pos="$(cat "$(kafka_logpos_file)" 2>/dev/null || echo 0)"
  [[ "$pos" =~ ^[0-9]+$ ]] || pos=0
  # No grep -q: under pipefail, tail would die of SIGPIPE when grep stops reading at the match.
  tail -c "+$((pos + 1))" "$(kafka_logfile)" 2>/dev/null | grep -F 'Kafka Server started' >/dev/null &&
    port_in_use "$KAFKA_PORT"
}

wait_kafka_up() {
  local deadline=$((SECONDS + TIMEOUT))
  while ((SECONDS < deadline)); do
    kafka_started && return 0
    kafka_alive || { log_tail "$(kafka_logfile)"; die "Kafka on $HOST:$KAFKA_PORT exited during start-up"; }
    sleep 0.2
  done
  log_tail "$(kafka_logfile)"
  die "Kafka on $HOST:$KAFKA_PORT did not log 'Kafka Server started' within ${TIMEOUT}s"
}

# Our server.properties from the template, rewritten on every start (ports may change).
kafka_write_conf() {
  local dir="$1" sed_dir
  # The data dir is a sed replacement: escape its \, & and the | delimiter.
  sed_dir="$(printf '%s' "$dir/data" | sed 's/[\\&|]/\\&/g')"
  sed -e "s|@HOST@|$HOST|g" -e "s|@PORT@|$KAFKA_PORT|g" \
    -e "s|@CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" -e "s|@LOG_DIRS@|$sed_dir|g" \
    "$REPO_ROOT/scripts/kafka/server.properties" >"$dir/server.properties.tmp"
  mv "$dir/server.properties.tmp" "$dir/server.properties"
}

# Formats the KRaft storage once, with a new cluster id (an unformatted dir is wiped first).
kafka_format() {
  local dir="$1" cluster_id
  [[ -f "$dir/data/meta.properties" ]] && return 0
  rm -rf "$dir/data"
  cluster_id="$(kafka_java kafka.tools.StorageTool random-uuid </dev/null 2>>"$LOG_DIR/kafka-format.log" | tail -n 1 || true)"
  [[ "$cluster_id" =~ ^[A-Za-z0-9_-]{22}$ ]] ||
    { log_tail "$LOG_DIR/kafka-format.log"; die "kafka.tools.StorageTool random-uuid printed '$cluster_id', not a cluster id"; }
  kafka_java kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" \
    </dev/null >>"$LOG_DIR/kafka-format.log" 2>&1 ||
    { log_tail "$LOG_DIR/kafka-format.log"; die "kafka.tools.StorageTool format failed"; }
  log "kafka storage formatted in $dir/data (cluster id $cluster_id)"
}

start_kafka() {
  local dir pidfile logfile port
  dir="$(kafka_dir)"
  pidfile="$(kafka_pidfile)"
  logfile="$(kafka_logfile)"
  if kafka_alive; then
    wait_kafka_up
    return 0
  fi
  rm -f "$pidfile"
  # Something else (not ours) on a port would make tests talk to the wrong server.
  for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    port_in_use "$port" &&
      die "port $HOST:$port is already in use by a process we did not start (no live pid in $pidfile); stop it or set FSTORE_TEST_KAFKA_PORT / FSTORE_TEST_KAFKA_CONTROLLER_PORT"
  done
  ensure_java 0
  kafka_fetch
  mkdir -p "$dir" "$LOG_DIR"
  kafka_write_conf "$dir"
  kafka_format "$dir"
  touch "$logfile"
  stat -c %s "$logfile" >"$(kafka_logpos_file)"
  # The flags of Kafka's own kafka-server-start.sh, with a heap sized for a 2-core test machine.
  # nohup execs java, so $! is the broker's pid.
  nohup "$(java_bin)" -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError \
    "${KAFKA_JAVA_OPTS[@]}" kafka.Kafka "$dir/server.properties" </dev/null >>"$logfile" 2>&1 &
  echo "$!" >"$pidfile"
  wait_kafka_up
  log "kafka $KAFKA_VERSION on $HOST:$KAFKA_PORT (controller $KAFKA_CONTROLLER_PORT) started"
}

stop_kafka() {
  local pidfile pid deadline=$((SECONDS + TIMEOUT))
  pidfile="$(kafka_pidfile)"
  if ! kafka_alive; then
    rm -f "$pidfile"
    return 0
  fi
  pid="$(cat "$pidfile")"
  # SIGTERM is Kafka's clean shutdown (it closes its logs, so the next start skips recovery).
  kill "$pid" 2>/dev/null || true
  while ((SECONDS < deadline)); do
    if ! proc_running "$pid"; then
      rm -f "$pidfile"
      kafka_wait_ports_closed
      log "kafka on $HOST:$KAFKA_PORT stopped"
      return 0
    fi
    sleep 0.1
  done
  log "kafka on port $KAFKA_PORT ignored SIGTERM for ${TIMEOUT}s; sending SIGKILL to pid $pid"
  log_tail "$(kafka_logfile)"
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  kafka_wait_ports_closed
}

# A JVM's main thread can turn zombie (proc_running: stopped) before its other threads have
# exited and closed the listeners; a start right after a stop must not find the ports taken.
kafka_wait_ports_closed() {
  local deadline=$((SECONDS + TIMEOUT))
  while ((SECONDS < deadline)); do
    port_in_use "$KAFKA_PORT" || port_in_use "$KAFKA_CONTROLLER_PORT" || return 0
    sleep 0.1
  done
  die "Kafka's ports $HOST:$KAFKA_PORT and $KAFKA_CONTROLLER_PORT were still open ${TIMEOUT}s after it stopped"
}

# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------

print_env() {
  local nodes="" port
  for port in "${CLUSTER_PORTS[@]}"; do nodes+="${nodes:+,}$HOST:$port"; done
  # Unquoted on purpose (ports are validated digits): the lines are valid for both
  # `eval` in bash and dotenv-style parsers.
  printf 'export FSTORE_TEST_REDIS_URL=%s\n' "redis://$HOST:$REDIS_PORT"
  printf 'export FSTORE_TEST_REDIS_CLUSTER_NODES=%s\n' "$nodes"
  printf 'export FSTORE_TEST_POSTGRES_URL=%s\n' "postgres://$PG_USER@$HOST:$PG_PORT/$PG_DB"
  printf 'export FSTORE_TEST_KAFKA_BROKERS=%s\n' "$HOST:$KAFKA_PORT"
}

print_status() {
  local rc=0 port
  if pid_alive "$(redis_pidfile)" && redis_ping "$REDIS_PORT"; then
    echo "redis      $HOST:$REDIS_PORT  running"
  else
    echo "redis      $HOST:$REDIS_PORT  stopped"; rc=1
  fi
  for port in "${CLUSTER_PORTS[@]}"; do
    if pid_alive "$(cluster_pidfile "$port")" && redis_ping "$port"; then
      echo "cluster    $HOST:$port  running (cluster_state:$(cluster_field "$port" cluster_state))"
    else
      echo "cluster    $HOST:$port  stopped"; rc=1
    fi
  done
  if pg_running; then
    echo "postgres   $HOST:$PG_PORT  running"
  else
    echo "postgres   $HOST:$PG_PORT  stopped"; rc=1
  fi
  if kafka_alive && kafka_started; then
    echo "kafka      $HOST:$KAFKA_PORT  running (Kafka $KAFKA_VERSION, KRaft controller on $KAFKA_CONTROLLER_PORT)"
  else
    echo "kafka      $HOST:$KAFKA_PORT  stopped"; rc=1
  fi
  return "$rc"
}

main() {
  local sub="${1:-}"
  case "$sub" in
    start)
      ensure_packages
      pg_locate
      mkdir -p "$RUN_DIR" "$LOG_DIR"
      start_redis
      start_cluster
      start_postgres
      start_kafka
      ;;
    stop)
      # Best effort for each server so one failure does not leave the others running.
      local rc=0
      if command -v redis-cli >/dev/null; then
        (stop_redis) || rc=1
        (stop_cluster) || rc=1
      fi
      if [[ -f "$PG_DATA/PG_VERSION" ]]; then (stop_postgres) || rc=1; fi
      (stop_kafka) || rc=1
      return "$rc"
      ;;
    start-redis)
      ensure_packages
      mkdir -p "$RUN_DIR" "$LOG_DIR"
      start_redis
      ;;
    stop-redis)
      command -v redis-cli >/dev/null || return 0
      stop_redis
      ;;
    start-postgres)
      ensure_packages
      pg_locate
      mkdir -p "$RUN_DIR" "$LOG_DIR"
      start_postgres
      ;;
    stop-postgres)
      stop_postgres
      ;;
    start-kafka)
      mkdir -p "$RUN_DIR" "$LOG_DIR"
      start_kafka
      ;;
    stop-kafka)
      stop_kafka
      ;;
    status) print_status ;;
    env) print_env ;;
    *)
      echo "usage: $0 start|stop|status|env|start-redis|stop-redis|start-postgres|stop-postgres|start-kafka|stop-kafka" >&2
      exit 2
      ;;
  esac
}

main "$@"
