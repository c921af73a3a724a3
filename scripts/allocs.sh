#!/usr/bin/env bash
# Heap allocations per delivered 1:1 message on a node, by thread: uprobes
# on jemalloc's entry points of the node binary, counted with `perf stat`
# over 4 s in the middle of a p2p run, divided by the pushes the node made
# meanwhile (its /metrics). Needs perf (Debian: linux-perf) and root.
# SITES=1 also records 2 s of call stacks and prints the cores' top
# allocation sites (the first frame outside alloc/core/std/prost/bytes);
# THREADS=ourchat-writer those of the threads named so instead.
#   BIN=target/release RATE=2000 scripts/allocs.sh
#   SITES=1 BIN=target/release RATE=2000 scripts/allocs.sh
#   SITES=1 THREADS=ourchat-writer BIN=target/release RATE=2000 scripts/allocs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}; RATE=${RATE:-2000}
probes=(_rjem_malloc _rjem_mallocx _rjem_calloc _rjem_rallocx _rjem_realloc)
perf probe -q -d 'probe_ourchat:*' 2>/dev/null || true
for f in "${probes[@]}"; do perf probe -q -x "$BIN/ourchat" -a "$f"; done
OUT=$(mktemp -d "${TMPDIR:-/tmp}/ourchat-allocs.XXXXXX")
. scripts/bench-lib.sh
trap 'end_nodes; perf probe -q -d "probe_ourchat:*" 2>/dev/null || true' EXIT
start_node 10000 --cores 2
echo "load $(cut -d' ' -f1-3 /proc/loadavg), $BIN, p2p at $RATE sends/s"
"${LOADGEN_ON[@]}" "$BIN/ourchat-loadgen" p2p --users 10000 --procs 2 --rate "$RATE" --duration 15 \
  --ramp 20000 --heartbeat 30 --drain 3 --targets "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN" \
  --tokens "$DATA/tokens" --server-pid "$NODE_PID" --json "$OUT/run.json" >"$OUT/loadgen.log" 2>&1 &
loadgen=$!
pushed() { curl -s "127.0.0.1:$ADMIN/metrics" | awk '/^ourchat_messages_delivered_total/ { s += $2 } END { print s + 0 }'; }
sleep 6
before=$(pushed)
perf stat --per-thread -e 'probe_ourchat:*' -p "$NODE_PID" -o "$OUT/stat.txt" -- sleep 4 >/dev/null 2>&1
after=$(pushed)
if [[ ${SITES:-} == 1 ]]; then
  perf record -q -e 'probe_ourchat:*' --call-graph dwarf,16384 -p "$NODE_PID" -o "$OUT/sites.data" -- sleep 2 >/dev/null 2>&1
fi
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
[[ ${SITES:-} == 1 ]] || exit 0
perf script -i "$OUT/sites.data" -F comm,ip,sym --no-inline 2>/dev/null | python3 -c '
import collections, re, sys
threads = sys.argv[1]
plumbing = re.compile(r"^<?(_rjem|alloc::|core::|std::|hashbrown|bytes::|__rust|T as alloc|prost)")
sites = collections.Counter()
comm, chain = None, []
def done():
    if comm and comm.startswith(threads) and len(chain) > 1:
        sites[next((f for f in chain[1:] if not plumbing.match(f)), chain[-1])] += 1
for line in sys.stdin:
    if not line.strip():
        done(); comm, chain = None, []
    elif not line.startswith("\t"):
        comm, chain = line.strip(), []
    elif len(parts := line.split(None, 1)) == 2:
        chain.append(re.sub(r"::h[0-9a-f]{16}$", "", parts[1].strip()))
done()
total = max(sum(sites.values()), 1)
print(f"allocation sites of the {threads}* threads, share of their allocations:")
for site, n in sites.most_common(15):
    print(f"{100 * n / total:5.1f}% {site[:140]}")
' "${THREADS:-ourchat-core}"
