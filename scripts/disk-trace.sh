#!/usr/bin/env bash
# What a node's commits wait on: a 1:1 run (10,000 users, RATE msg/s)
# against a fresh one-core node while `perf record -a` traces, for 10 s,
# the writer's pwrite and fdatasync calls, ext4's fsync and the block
# requests they issue (data `WS`, metadata `WSM`, cache flush `FF`); then
# the fdatasync and pwrite quantiles, the requests by kind, and the
# events inside the slowest fdatasyncs. Needs perf and tracefs.
#   PIN=1 BIN=target/release RATE=10000 scripts/disk-trace.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}; RATE=${RATE:-10000}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/ourchat-disk-trace.XXXXXX")
. scripts/bench-lib.sh
start_node 10000 --cores "${CORES:-1}"
p2p_run 2>/dev/null &
loadgen=$!
sleep 5
events=ext4:ext4_sync_file_enter,ext4:ext4_sync_file_exit,block:block_rq_issue,block:block_rq_complete
for call in fdatasync pwrite64; do events+=",syscalls:sys_enter_$call,syscalls:sys_exit_$call"; done
perf record -a -e "$events" -o "$OUT/trace.data" -- sleep 10 >/dev/null 2>&1
wait "$loadgen" || true
stop_node
perf script -i "$OUT/trace.data" 2>/dev/null >"$OUT/trace.txt"
python3 - "$OUT" <<'PY'
import collections, json, re, sys
out = sys.argv[1]
events = []
for line in open(f"{out}/trace.txt"):
    m = re.match(r"\s*(\S.*?)\s+\d+\s+\[\d+\]\s+([\d.]+):\s+(\S+):\s*(.*)", line)
    if m:
        events.append((float(m.group(2)), m.group(1), m.group(3), m.group(4)))
def spans(call):
    started, found = None, []
    for i, (t, comm, name, _) in enumerate(events):
        if comm != "ourchat-writer":
            continue
        if name == f"syscalls:sys_enter_{call}":
            started = (t, i)
        elif name == f"syscalls:sys_exit_{call}" and started:
            found.append((t - started[0], started[1], i))
            started = None
    return sorted(found)
def quantiles(found):
    n = len(found)
    return f"{n}, p50 {found[n // 2][0] * 1e3:.2f} ms, p99 {found[int(n * .99)][0] * 1e3:.2f}, max {found[-1][0] * 1e3:.2f}" if n else "none"
syncs = spans("fdatasync")
print(f"fdatasync: {quantiles(syncs)}; over 10 ms: {sum(d > 0.01 for d, _, _ in syncs)}")
print(f"pwrite: {quantiles(spans('pwrite64'))}")
kinds = collections.Counter(a.split()[1] for _, _, name, a in events if name == "block:block_rq_issue")
print("block requests issued:", dict(kinds))
for took, first, last in syncs[-3:]:
    print(f"-- an fdatasync of {took * 1e3:.1f} ms:")
    for t, comm, name, args in events[first:last + 1]:
        if name.startswith(("block:", "ext4:")):
            print(f"   +{(t - events[first][0]) * 1e3:6.2f} ms {comm:<16} {name} {args[:60]}")
print(f"deliver p99 {json.load(open(f'{out}/run.json'))['send_to_deliver_us']['p99'] / 1000:.1f} ms")
PY
