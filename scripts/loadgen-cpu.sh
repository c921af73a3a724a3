#!/usr/bin/env bash
# The loadgen's own CPU per delivered message: one 1:1 run (10,000 users,
# random peers, RATE msg/s, 15 s) against a fresh node on one pinned
# reactor core, the loadgen on the other CPU; for A/B pairs of loadgen
# builds against one server build. BIN: the binaries' folder.
#   BIN=target/release RATE=20000 scripts/loadgen-cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}; RATE=${RATE:-20000}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/ourchat-loadgen-cpu.XXXXXX")
PIN=${PIN:-1}
. scripts/bench-lib.sh
start_node 10000 --cores 1
load=$(cut -d' ' -f1 /proc/loadavg)
p2p_run --heartbeat 30 2>/dev/null
python3 - "$OUT" "$load" <<'PY'
import json, sys
out, load = sys.argv[1], sys.argv[2]
run = json.load(open(f"{out}/run.json"))
delivered = run["counters"]["delivered"]
print(f"load {load}: loadgen {run['loadgen_cpu_secs'] * 1e6 / max(delivered, 1):.1f} CPU µs per"
      f" delivered message ({run['loadgen_cpu_share'] * 100:.0f}% of its CPUs), node"
      f" {run['server_cpu_us_per_delivered']:.1f}; {delivered} delivered, lost {run['lost']}")
PY
