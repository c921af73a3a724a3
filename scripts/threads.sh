#!/usr/bin/env bash
# Where a node's CPU goes per delivered message, by thread: one loadgen
# run against a fresh node, with every thread's user and system time,
# sleeps (voluntary context switches), preemptions and time spent
# runnable but waiting for a CPU counted over 8 s in the middle of it,
# per message delivered, and the disk's write requests and the messages
# between cores per message. BIN: the binaries' folder.
#   BIN=target/release RATE=5000 scripts/threads.sh        # 1:1, 10,000 users, RATE msg/s
#   SCENARIO=group RATE=40 scripts/threads.sh              # one 5,000-member group, RATE sends/s
#   CORES=1 scripts/threads.sh                             # the node on one reactor core (default 2)
#   NODE_SET="server.move_to_user_core=false" scripts/threads.sh   # node settings
#   PEER=mosquitto PIN=1 RATE=10000 scripts/threads.sh    # the same, of Mosquitto (MQTT QoS 1)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}; RATE=${RATE:-5000}; SCENARIO=${SCENARIO:-p2p}; CORES=${CORES:-2}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/ourchat-threads.XXXXXX")
. scripts/bench-lib.sh
case $SCENARIO in
  p2p) users=10000; fanout=1; shape=(--heartbeat 30 --drain 3) ;;
  group) users=5000; fanout=$((users - 1)); shape=(--group-size "$users" --drain 15) ;;
  *) echo "SCENARIO is p2p or group" >&2; exit 2 ;;
esac
if [[ ${PEER:-} == mosquitto ]]; then
  start_broker
  SERVER_PID=$BROKER_PID; DATA=${TMPDIR:-/tmp}
  target=(--protocol mqtt --targets "127.0.0.1:$MQ_PORT" --tokens "$(mqtt_tokens "$users")")
else
  start_node "$users" --cores "$CORES"
  SERVER_PID=$NODE_PID
  target=(--targets "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN" --tokens "$DATA/tokens")
fi
echo "load $(cut -d' ' -f1-3 /proc/loadavg), $BIN, ${PEER:-ourchat}, $SCENARIO at $RATE sends/s"
"${LOADGEN_ON[@]}" "$BIN/ourchat-loadgen" "$SCENARIO" --users "$users" --procs 2 --rate "$RATE" --duration 15 \
  --ramp 20000 "${shape[@]}" "${target[@]}" --server-pid "$SERVER_PID" --json "$OUT/run.json" \
  >"$OUT/loadgen.log" 2>&1 &
loadgen=$!
mesh_sent() {
  [[ ${PEER:-} != mosquitto ]] || { echo 0; return; }
  curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '/^ourchat_mesh_messages_total/ { n += $2 } END { print n + 0 }'
}
disk_writes() { awk -v d="$(findmnt -no SOURCE --target "$DATA" | xargs basename)" '$3 == d { print $8 }' /proc/diskstats; }
sleep 6
scripts/threads.py snap "$SERVER_PID" "$OUT/a.json"; writes0=$(disk_writes); mesh0=$(mesh_sent)
sleep 8
scripts/threads.py snap "$SERVER_PID" "$OUT/b.json"; writes1=$(disk_writes); mesh1=$(mesh_sent)
wait "$loadgen" || echo "(the loadgen reported errors: $OUT/loadgen.log)"
[[ ${PEER:-} == mosquitto ]] || curl -s "http://127.0.0.1:$ADMIN/metrics" >"$OUT/metrics" 2>/dev/null || true
messages=$((RATE * 8 * fanout))
scripts/threads.py diff "$OUT/a.json" "$OUT/b.json" "$messages"
echo "disk write requests per message: $(python3 -c "print(round((${writes1:-0} - ${writes0:-0}) / $messages, 3))")"
echo "messages between cores per message: $(python3 -c "print(round(($mesh1 - $mesh0) / $messages, 3))")"
python3 -c "
import json; r = json.load(open('$OUT/run.json')); d = r['send_to_deliver_us']
print(f\"delivered {r['deliveries_per_sec']:.0f}/s, deliver p50 {d['p50'] / 1000:.1f} ms, p99 {d['p99'] / 1000:.1f} ms,\",
      f\"{r.get('server_cpu_us_per_delivered', 0):.1f} CPU µs per delivered message, lost {r['lost']}\")"
[[ ${PEER:-} == mosquitto ]] || scripts/commits.py "$OUT/metrics"
