#!/usr/bin/env bash
# Token logins per second for 15 s against a fresh node holding USERS
# connections that hang up and log in again (the loadgen's storm), and
# the node's CPU meanwhile. BIN: the binaries' folder.
#   BIN=target/release scripts/storm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}; USERS=${USERS:-19000}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/ourchat-storm.XXXXXX")
. scripts/bench-lib.sh
start_node "$USERS" --cores "${CORES:-2}"
load=$(cut -d' ' -f1 /proc/loadavg)
run run storm --users "$USERS" --procs "$(procs_for "$USERS")" --ramp 20000 \
  --duration 15 --drain 0
python3 - "$OUT/run.json" "$load" <<'PY'
import json, sys
run, load = json.load(open(sys.argv[1])), sys.argv[2]
logins = (run["counters"]["logins"] - run["users"]) / run["phase_secs"]
print(f"load {load}: {logins:.0f} logins/s, node {run['server_cpu_secs']:.2f} CPU s,"
      f" loadgen {run['loadgen_cpu_share']:.2f} of the machine")
PY
