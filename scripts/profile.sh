#!/usr/bin/env bash
# Where a node's user-space time goes: a fresh node on one pinned reactor
# core, one 1:1 loadgen run (10,000 users, RATE msg/s), and 4 s of
# `perf record -e cpu-clock:u` with DWARF call graphs in the middle of it.
# Read it with `perf report -i OUT --comm ourchat-core-1 --no-children
# --sort sym`. BIN: the binaries' folder. KERNEL=1 samples the kernel too
# (frame-pointer call graphs, which the kernel's own are), to split a
# message's time by system call; PEER=mosquitto profiles Mosquitto in the
# node's place, the same way.
#   BIN=target/release RATE=10000 scripts/profile.sh /tmp/prof.data
#   KERNEL=1 PEER=mosquitto BIN=target/release scripts/profile.sh /tmp/mosq.data
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}; RATE=${RATE:-10000}; PROF=${1:?usage: scripts/profile.sh OUT}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/ourchat-profile.XXXXXX")
PIN=${PIN:-1}
. scripts/bench-lib.sh
if [[ ${PEER:-} == mosquitto ]]; then
  start_broker
  SERVER_PID=$BROKER_PID
  target=(--protocol mqtt --targets "127.0.0.1:$MQ_PORT" --tokens "$(mqtt_tokens 10000)")
else
  start_node 10000 --cores 1
  SERVER_PID=$NODE_PID
  target=(--targets "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN" --tokens "$DATA/tokens")
fi
if [[ ${KERNEL:-} == 1 ]]; then sampling=(-e cpu-clock -g); else
  sampling=(-e cpu-clock:u --call-graph dwarf,16384); fi
echo "load $(cut -d' ' -f1-3 /proc/loadavg), ${PEER:-$BIN} at $RATE msg/s" >&2
"${LOADGEN_ON[@]}" "$BIN/ourchat-loadgen" p2p --users 10000 --procs 2 --rate "$RATE" --duration 15 \
  --ramp 20000 --heartbeat 30 --drain 3 "${target[@]}" --server-pid "$SERVER_PID" \
  >/dev/null 2>&1 &
loadgen=$!
sleep 7
perf record "${sampling[@]}" -F 2999 -p "$SERVER_PID" -o "$PROF" -- sleep 4 >/dev/null 2>&1
wait "$loadgen" || true
perf report -i "$PROF" --no-children --sort comm,dso --stdio -g none 2>/dev/null | grep '%' | head -8
perf report -i "$PROF" --comm "$([[ ${PEER:-} == mosquitto ]] && echo mosquitto || echo ourchat-core-1)" \
  --no-children --sort sym --stdio -g none 2>/dev/null | grep '%' | head -25
