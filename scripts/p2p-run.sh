#!/usr/bin/env bash
# One 1:1 loadgen run (10,000 users, random peers, RATE msg/s for 15 s)
# against a fresh node on one reactor core, and one line: delivered per
# second, node CPU per delivered message, deliver p50/p99, lost, and the
# node's own view (send→ack p99 and store commit p99 as histogram bounds,
# commits over 10 ms). For A/B pairs past saturation, where cpu-stat.sh's
# per-offered-message figure no longer holds, and for the tail's parts.
# BIN: the binaries' folder; PIN=1 and NODE_SET as in bench-lib.sh; DRAIN:
# seconds to wait for the last deliveries (3).
#   for v in a b a b; do PIN=1 BIN=/tmp/$v RATE=40000 scripts/p2p-run.sh $v; done
#   PIN=1 NODE_SET=storage.durability=normal RATE=10000 scripts/p2p-run.sh unsynced
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}; RATE=${RATE:-10000}; LABEL=${1:-run}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/ourchat-p2p-run.XXXXXX")
. scripts/bench-lib.sh
start_node 10000 --cores "${CORES:-1}"
load=$(cut -d' ' -f1 /proc/loadavg)
p2p_run 2>/dev/null
stop_node
python3 - "$OUT" "$LABEL" "$load" <<'PY'
import json, re, sys
out, label, load = sys.argv[1:4]
run = json.load(open(f"{out}/run.json"))
metrics = open(f"{out}/run.metrics").read()
def buckets(name):
    return [(float("inf") if le == "+Inf" else float(le), int(n))
            for le, n in re.findall(name + r'_bucket\{le="([^"]+)"\} (\d+)', metrics)]
def bound(hist, q):
    le = next(le for le, n in hist if n >= q * hist[-1][1])
    return f"≤ {le / 1000:g}" if le != float("inf") else f"> {hist[-2][0] / 1000:g}"
commits, acks = buckets("ourchat_store_commit_latency_us"), buckets("ourchat_send_ack_latency_us")
slow = commits[-1][1] - dict(commits)[10000.0]
deliver = run["send_to_deliver_us"]
print(f"{label} (load {load}): {run['deliveries_per_sec']:.0f} delivered/s,"
      f" {run['server_cpu_us_per_delivered']:.1f} CPU µs each, deliver p50 {deliver['p50'] / 1000:.1f}"
      f" p99 {deliver['p99'] / 1000:.1f} ms, lost {run['lost']}; node: send→ack p99 {bound(acks, .99)} ms,"
      f" commit p99 {bound(commits, .99)} ms, {slow} of {commits[-1][1]} commits over 10 ms")
PY
