#!/usr/bin/env bash
# One 1:1 loadgen run (10,000 users, RATE msg/s for 15 s) against a fresh
# node on one reactor core, told as a timeline: the deliver p99 so far at
# each second, and each 50 ms in which a thread other than the reactor and
# the writer took CPU, with each thread's share in ms (the kernel counts
# in 10 ms ticks, so a slice reads 0, 10, 20, …); then the log's files
# and the slowest commit. For finding what a p99 that jumps at one moment
# of a run met there (a segment filled at ~12 s of a 30,000/s run:
# BENCHMARKS.md, "A segment's upkeep at the lowest priority"). BIN: the
# binaries' folder; PIN=1 as in bench-lib.sh.
#   PIN=1 BIN=target/release RATE=30000 scripts/timeline.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}; RATE=${RATE:-30000}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/ourchat-timeline.XXXXXX")
. scripts/bench-lib.sh
start_node 10000 --cores 1
echo "load $(cut -d' ' -f1 /proc/loadavg), $BIN at $RATE msg/s"
python3 - "$NODE_PID" 22 >"$OUT/threads" <<'PY' &
import os, sys, time
pid, seconds = sys.argv[1], float(sys.argv[2])
tick_ms = 1000 // os.sysconf("SC_CLK_TCK")
def cpu_ticks():
    ticks = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        ticks[f"{name}:{tid}"] = int(fields[11]) + int(fields[12])
    return ticks
start, before = time.time(), cpu_ticks()
while time.time() - start < seconds:
    time.sleep(0.05)
    now = cpu_ticks()
    took = {k: (v - before.get(k, 0)) * tick_ms for k, v in now.items() if v > before.get(k, 0)}
    before = now
    hot = ("ourchat-core", "ourchat-writer")
    if any(not k.startswith(hot) for k in took):
        print(f"{time.time() - start:6.2f} s", " ".join(f"{k} {v}" for k, v in sorted(took.items())))
PY
sampler=$!
p2p_run --heartbeat 30 2>&1 | grep -o "^\[ *[0-9.]*s\]\|p99 deliver *[0-9]*" | paste - - |
  awk '{sub(/\]/, "", $2); printf "%6s p99 %.1f ms\n", $2, $5 / 1000}'
wait "$sampler"
cat "$OUT/threads"
ls -l "$DATA/messages"
scripts/commits.py "$OUT/run.metrics"
