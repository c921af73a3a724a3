# Helpers the benchmark scripts share (sourced; expects BIN and OUT):
# a fresh OurChat node (or Mosquitto) per run, a free port, one loadgen run.
NODE_PID=""
# Idle rows hold their connections this long (s); memory is read a second
# before the end of the hold, after the node has parked what stays idle
# (`server.park_after_ms`, 10 s) and its allocator has returned the pages.
IDLE_HOLD=${IDLE_HOLD:-16}
stop_node() {
  if [[ -n $NODE_PID ]]; then
    kill -TERM "$NODE_PID" 2>/dev/null || true
    wait "$NODE_PID" 2>/dev/null || true
    NODE_PID=""
  fi
}
# Every node's data directory, removed when the script exits (KEEP_DATA=1
# keeps them, server logs included). At the end, not between rows: freeing
# a run's segments (discards, on a disk mounted with `discard`) must not
# land in the next measured run. A full bench-peers run leaves ~1-2 GB.
NODE_DIRS=()
remove_node_dirs() { [[ -n ${KEEP_DATA:-} ]] || rm -rf -- "${NODE_DIRS[@]}"; }
# What every script does at exit; a script with more to undo traps
# `end_nodes; …` itself.
end_nodes() { stop_node; stop_broker; remove_node_dirs; }
trap end_nodes EXIT
# Whether ONLY (empty: everything) names this row kind.
want() { [[ -z ${ONLY:-} || " $ONLY " == *" $1 "* ]]; }
# Loadgen processes for N connections (one per 10,000: the file limit).
procs_for() { echo $(( ($1 + 9999) / 10000 )); }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# PIN=1: one CPU each, the server under test on CPU 0 (all its threads) and
# the loadgen on CPU 1, instead of all of them sharing both.
if [[ ${PIN:-} == 1 ]]; then SERVER_ON=(taskset -c 0); LOADGEN_ON=(taskset -c 1)
else SERVER_ON=(); LOADGEN_ON=(); fi

# The peer: Mosquitto (Debian's `mosquitto`), fresh for each run.
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
BROKER_PID=""
stop_broker() {
  if [[ -n $BROKER_PID ]]; then
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
  fi
}

# start_broker: a fresh broker on MQ_PORT (no persistence, Nagle off, no
# connection cap), in place of any node.
start_broker() {
  stop_broker
  stop_node
  local dir
  dir=$(mktemp -d "${TMPDIR:-/tmp}/mosquitto-bench.XXXXXX")
  NODE_DIRS+=("$dir")
  MQ_PORT=$(free_port)
  cat >"$dir/mosquitto.conf" <<EOF
listener $MQ_PORT 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
max_connections -1
persistence false
log_dest none
EOF
  (ulimit -n "$(ulimit -Hn)"; exec "${SERVER_ON[@]}" "$MOSQUITTO" -c "$dir/mosquitto.conf") &
  BROKER_PID=$!
  for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $MQ_PORT), 1)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "mosquitto did not start" >&2; exit 1
}

# mqtt_tokens USERS: the loadgen's user list for MQTT runs ("index -" lines).
mqtt_tokens() {
  local file="$OUT/tokens-$1"
  [[ -f $file ]] || seq 1 "$1" | sed 's/$/ -/' >"$file"
  echo "$file"
}

# start_node USERS [extra serve flags...]: fresh data dir, USERS provisioned.
start_node() {
  local users=$1; shift
  stop_node
  stop_broker
  DATA=$(mktemp -d "${TMPDIR:-/tmp}/ourchat-bench.XXXXXX")
  NODE_DIRS+=("$DATA")
  PORT=$(free_port); ADMIN=$(free_port)
  "$BIN/ourchat" admin provision --count "$users" --data-dir "$DATA" --out "$DATA/tokens" 2>/dev/null
  "${SERVER_ON[@]}" "$BIN/ourchat" serve --data-dir "$DATA" --listen "127.0.0.1:$PORT" \
    --set "server.admin_listen=127.0.0.1:$ADMIN" --set "server.grpc_listen=127.0.0.1:$(free_port)" \
    --set server.pin_cores=false $(for kv in ${NODE_SET:-}; do printf -- '--set %s ' "$kv"; done) "$@" \
    >"$DATA/server.log" 2>&1 &
  NODE_PID=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && return 0
    python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$ADMIN/readyz', timeout=1)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "node did not become ready" >&2; cat "$DATA/server.log" >&2; exit 1
}

# p2p_run [loadgen flags...]: the A/B scripts' run, named `run`: 10,000
# users sending to random peers at RATE msg/s for 15 s, 3 s to drain.
p2p_run() {
  run run p2p --users 10000 --procs 2 --rate "$RATE" --duration 15 --ramp 20000 --drain "${DRAIN:-3}" "$@"
}

# run NAME SCENARIO [loadgen flags...]: one loadgen run against the node.
run() {
  local name=$1; shift
  echo "== $name" >&2
  "${LOADGEN_ON[@]}" "$BIN/ourchat-loadgen" "$@" --targets "${TARGET:-127.0.0.1:$PORT}" --admin "127.0.0.1:$ADMIN" \
    --tokens "$DATA/tokens" --server-pid "$NODE_PID" --json "$OUT/$name.json" >&2 \
    || echo "($name reported errors)" >&2
  # The node's own histograms (its store's commit times among them).
  curl -s "http://127.0.0.1:$ADMIN/metrics" >"$OUT/$name.metrics" 2>/dev/null || true
}

