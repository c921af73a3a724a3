#!/usr/bin/env bash
# The node's CPU, context switches and io_uring_enter calls per delivered
# 1:1 message, counted by `perf stat` over 8 s in the middle of one loadgen
# run (10,000 users, random peers) against a fresh node: lighter than
# threads.sh, for A/B pairs. BIN: the binaries' folder.
#   BIN=target/release RATE=10000 scripts/cpu-stat.sh
#   CORES=1 scripts/cpu-stat.sh                 # the node on one reactor core (default 2)
#   EVENTS=probe_libc:clock_gettime scripts/cpu-stat.sh   # also count these per message
#     (a uprobe first: perf probe -x /lib/x86_64-linux-gnu/libc.so.6 --add clock_gettime)
#   READS=1 scripts/cpu-stat.sh                 # also how many frames each recvfrom took
#     (a 1:1 frame is under 60 bytes: a larger read holds several)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}; RATE=${RATE:-10000}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/ourchat-cpu-stat.XXXXXX")
. scripts/bench-lib.sh
start_node 10000 --cores "${CORES:-2}"
load=$(cut -d' ' -f1 /proc/loadavg)
p2p_run --heartbeat 30 &
loadgen=$!
sleep 6
if [[ ${READS:-} == 1 ]]; then
  perf record -e syscalls:sys_exit_recvfrom -p "$NODE_PID" -o "$OUT/reads.data" -- sleep 8 >/dev/null 2>&1 &
  reads=$!
fi
perf stat -x, -e "task-clock,context-switches,syscalls:sys_enter_io_uring_enter${EVENTS:+,$EVENTS}" -p "$NODE_PID" -- sleep 8 2>"$OUT/stat" >/dev/null
wait "$loadgen" ${reads:-}
[[ -z ${reads:-} ]] || perf script -i "$OUT/reads.data" -F trace 2>/dev/null | awk '{print $NF}' >"$OUT/reads"
python3 - "$OUT" "$RATE" "$load" "${EVENTS:-}" <<'PY'
import json, sys
out, rate, load, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
messages = rate * 8
counted = {}
for line in open(f"{out}/stat"):
    fields = line.strip().split(",")
    if len(fields) > 2 and fields[0].replace(".", "").isdigit():
        counted[fields[2]] = float(fields[0])
run = json.load(open(f"{out}/run.json"))
print(f"load {load}: {counted['task-clock'] * 1e3 / messages:.1f} CPU µs and"
      f" {counted['context-switches'] / messages:.2f} context switches and"
      f" {counted.get('syscalls:sys_enter_io_uring_enter', 0) / messages:.2f} io_uring_enter per message,"
      f" deliver p99 {run['send_to_deliver_us']['p99'] / 1000:.1f} ms, lost {run['lost']}"
      + "".join(f", {counted.get(event, 0) / messages:.2f} {event}"
                for event in extra.split(",") if event))
try:
    returns = [int(value, 16) for value in open(f"{out}/reads")]
except FileNotFoundError:
    sys.exit()
kinds = {"one frame": 0, "several frames": 0, "would block": 0, "the end": 0}
for value in returns:
    kinds["would block" if value >= 1 << 63 else "the end" if value == 0 else
          "one frame" if value < 60 else "several frames"] += 1
print("recvfrom returned: " + ", ".join(
    f"{kind} {100 * n / max(len(returns), 1):.0f}%" for kind, n in kinds.items()))
PY
