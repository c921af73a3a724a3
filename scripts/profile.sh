#!/usr/bin/env bash
# Where a node's user-space time goes: a fresh node on one pinned reactor
# core, one 1:1 loadgen run (10,000 users, RATE msg/s), and 4 s of
# `perf record -e cpu-clock:u` with DWARF call graphs in the middle of it.
# Read it with `perf report -i OUT --comm ourchat-core-1 --no-children
# --sort sym`. BIN: the binaries' folder.
#   BIN=target/release RATE=10000 scripts/profile.sh /tmp/prof.data
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}; RATE=${RATE:-10000}; PROF=${1:?usage: scripts/profile.sh OUT}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/ourchat-profile.XXXXXX")
PIN=${PIN:-1}
. scripts/bench-lib.sh
start_node 10000 --cores 1
echo "load $(cut -d' ' -f1-3 /proc/loadavg), $BIN at $RATE msg/s" >&2
run run p2p --users 10000 --procs 2 --rate "$RATE" --duration 15 --ramp 20000 \
  --heartbeat 30 --drain 3 >/dev/null 2>&1 &
loadgen=$!
sleep 7
perf record -e cpu-clock:u -F 2999 -g --call-graph dwarf,16384 -p "$NODE_PID" -o "$PROF" \
  -- sleep 4 >/dev/null 2>&1
wait "$loadgen" || true
perf report -i "$PROF" --no-children --sort comm --stdio -g none 2>/dev/null | grep '%' | head -4
perf report -i "$PROF" --comm ourchat-core-1 --no-children --sort sym --stdio -g none 2>/dev/null \
  | grep '%' | head -25
