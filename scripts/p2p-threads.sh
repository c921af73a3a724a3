#!/usr/bin/env bash
# Where a node's CPU goes per 1:1 message, by thread: one p2p run (10,000
# users, RATE msg/s for 15 s) against a fresh node, with every thread's
# user and system time, sleeps (voluntary context switches) and
# preemptions counted over 8 s in the middle of it, per message sent,
# and the disk's write requests per message. BIN: the binaries' folder.
#   BIN=target/release RATE=5000 scripts/p2p-threads.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}; RATE=${RATE:-5000}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/ourchat-threads.XXXXXX")
. scripts/bench-lib.sh
trap stop_node EXIT
start_node 10000 --cores 2
echo "load $(cut -d' ' -f1-3 /proc/loadavg), $BIN, $RATE msg/s"
"$BIN/ourchat-loadgen" p2p --users 10000 --procs 2 --rate "$RATE" --duration 15 --drain 3 \
  --ramp 20000 --heartbeat 30 --targets "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN" \
  --tokens "$DATA/tokens" --server-pid "$NODE_PID" --json "$OUT/run.json" >"$OUT/loadgen.log" 2>&1 &
loadgen=$!
disk_writes() { awk -v d="$(findmnt -no SOURCE --target "$DATA" | xargs basename)" '$3 == d { print $8 }' /proc/diskstats; }
sleep 6
scripts/p2p-threads.py snap "$NODE_PID" "$OUT/a.json"; writes0=$(disk_writes)
sleep 8
scripts/p2p-threads.py snap "$NODE_PID" "$OUT/b.json"; writes1=$(disk_writes)
wait "$loadgen" || echo "(the loadgen reported errors: $OUT/loadgen.log)"
messages=$((RATE * 8))
scripts/p2p-threads.py diff "$OUT/a.json" "$OUT/b.json" "$messages"
echo "disk write requests per message: $(python3 -c "print(round((${writes1:-0} - ${writes0:-0}) / $messages, 3))")"
python3 -c "
import json; r = json.load(open('$OUT/run.json')); d = r['send_to_deliver_us']
print(f\"delivered {r['deliveries_per_sec']:.0f}/s, deliver p50 {d['p50'] / 1000:.1f} ms, p99 {d['p99'] / 1000:.1f} ms,\",
      f\"{r.get('server_cpu_us_per_delivered', 0):.1f} CPU µs per delivered message, lost {r['lost']}\")"
