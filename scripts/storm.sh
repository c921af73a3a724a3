#!/usr/bin/env bash
# Token logins per second for 15 s against a fresh node holding USERS
# connections that hang up and log in again (the loadgen's storm), the
# node's CPU over the storm, and its CPU and system calls per login over the
# whole run (the first logins and the storm's: `perf stat` on the node, which
# needs perf). BIN: the binaries' folder.
#   BIN=target/release scripts/storm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}; USERS=${USERS:-19000}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/ourchat-storm.XXXXXX")
. scripts/bench-lib.sh
start_node "$USERS" --cores "${CORES:-2}"
load=$(cut -d' ' -f1 /proc/loadavg)
calls=(recvfrom sendto shutdown close accept fcntl)
perf stat -x, -e "task-clock$(printf ',syscalls:sys_enter_%s' "${calls[@]}")" -p "$NODE_PID" \
  -o "$OUT/stat" &
counting=$!
run run storm --users "$USERS" --procs "$(procs_for "$USERS")" --ramp 20000 \
  --duration 15 --drain 0
kill -INT "$counting"; wait "$counting" || true
python3 - "$OUT/run.json" "$OUT/stat" "$load" <<'PY'
import json, sys
run, load = json.load(open(sys.argv[1])), sys.argv[3]
counted = {}
for line in open(sys.argv[2]):
    fields = line.strip().split(",")
    if len(fields) > 2 and fields[0].replace(".", "").isdigit():
        counted[fields[2].removeprefix("syscalls:sys_enter_")] = float(fields[0])
logins = run["counters"]["logins"]
rate = (logins - run["users"]) / run["phase_secs"]
print(f"load {load}: {rate:.0f} logins/s, node {run['server_cpu_secs']:.2f} CPU s,"
      f" loadgen {run['loadgen_cpu_share']:.2f} of the machine")
calls = " ".join(f"{name} {n / logins:.2f}" for name, n in counted.items() if name != "task-clock")
print(f"  per login ({logins} in all): node {counted.get('task-clock', 0) * 1000 / logins:.1f} CPU µs; {calls}")
PY
