#!/usr/bin/env bash
# Heap allocations per delivered 1:1 message on a node, by thread: uprobes
# on jemalloc's entry points of the node binary, counted with `perf stat`
# over 4 s in the middle of a p2p run, divided by the pushes the node made
# meanwhile (its /metrics). Needs perf (Debian: linux-perf) and root.
#   BIN=target/release RATE=2000 scripts/allocs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}; RATE=${RATE:-2000}
probes=(_rjem_malloc _rjem_mallocx _rjem_calloc _rjem_rallocx _rjem_realloc)
perf probe -q -d 'probe_ourchat:*' 2>/dev/null || true
for f in "${probes[@]}"; do perf probe -q -x "$BIN/ourchat" -a "$f"; done
OUT=$(mktemp -d "${TMPDIR:-/tmp}/ourchat-allocs.XXXXXX")
. scripts/bench-lib.sh
trap 'stop_node; perf probe -q -d "probe_ourchat:*" 2>/dev/null || true' EXIT
start_node 10000 --cores 2
echo "load $(cut -d' ' -f1-3 /proc/loadavg), $BIN, p2p at $RATE sends/s"
"$BIN/ourchat-loadgen" p2p --users 10000 --procs 2 --rate "$RATE" --duration 15 \
  --ramp 20000 --heartbeat 30 --drain 3 --targets "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN" \
  --tokens "$DATA/tokens" --server-pid "$NODE_PID" --json "$OUT/run.json" >"$OUT/loadgen.log" 2>&1 &
loadgen=$!
pushed() { curl -s "127.0.0.1:$ADMIN/metrics" | awk '/^ourchat_messages_delivered_total/ { s += $2 } END { print s + 0 }'; }
sleep 6
before=$(pushed)
perf stat --per-thread -e 'probe_ourchat:*' -p "$NODE_PID" -o "$OUT/stat.txt" -- sleep 4 >/dev/null 2>&1
after=$(pushed)
wait "$loadgen" || echo "(the loadgen reported errors: $OUT/loadgen.log)"
python3 - "$OUT/stat.txt" $((after - before)) <<'PY'
import collections, re, sys
by_thread = collections.Counter()
for line in open(sys.argv[1]):
    m = re.match(r'\s*(\S+?)-\d+\s+([\d,]+)\s+probe_ourchat:', line)
    if m:
        by_thread[m.group(1)] += int(m.group(2).replace(',', ''))
messages = max(int(sys.argv[2]), 1)
print(f"{messages} messages pushed in the window")
for name, n in by_thread.most_common():
    if n:
        print(f"{name:20s} {n / messages:6.2f} allocations per message")
print(f"{'total':20s} {sum(by_thread.values()) / messages:6.2f}")
PY
