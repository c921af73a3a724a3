#!/usr/bin/env bash
# OurChat side by side with Mosquitto (Debian's, installed when missing):
# the same ourchat-loadgen scenarios, spoken as MQTT 3.1.1 QoS 1 to a fresh
# broker and as OurChat's protocol to a fresh node, interleaved row by row
# (Mosquitto, then OurChat), on this machine's loopback. Both sides ack
# every delivery (PUBACK; DeliveryAck). Mosquitto's acks are in memory
# (persistence off); OurChat's are durable (fsync per batch). Prints one
# table with both and the ratios; each run's JSON is kept in $OUT.
#   scripts/bench-peers.sh          # short (~3 min), what `make bench-peers` runs
#   scripts/bench-peers.sh full     # the BENCHMARKS.md figures (~15 min)
#   ONLY="idle storm" scripts/bench-peers.sh full   # some rows: idle p2p fanout storm
#   RATES="40000 50000 60000" ONLY=p2p ...  # the 1:1 rows at these rates instead
#   BIN=/tmp/build-a ...            # run those binaries instead of building
#   CORES=1 ...                     # the node on one reactor core (default 2)
#   PIN=1 ...                       # one CPU each: the server (Mosquitto, or the node
#                                     on one reactor core) on CPU 0, the loadgen on CPU 1
#   UNSYNCED=1 ...                  # each 1:1 row also against a node without fsyncs
#                                     (durability = "normal"): what the node does on a
#                                     disk whose flushes never stall; not the durable figure
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-short}
OUT=${OUT:-target/bench-peers}
rm -rf "$OUT"
mkdir -p "$OUT"
if ! command -v mosquitto >/dev/null && [[ ! -x /usr/sbin/mosquitto ]]; then
  echo "installing mosquitto" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto >&2 ||
    { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto >&2; }
fi
if [[ -z ${BIN:-} ]]; then
  BIN=target/release
  cargo build --release --bin ourchat --bin ourchat-loadgen >&2
fi
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

# mq NAME SCENARIO USERS [loadgen flags...]: one run against a fresh broker.
mq() {
  local name=$1 scenario=$2 users=$3; shift 3
  start_broker
  echo "== $name (load $(cut -d' ' -f1 /proc/loadavg))" >&2
  "${LOADGEN_ON[@]}" "$BIN/ourchat-loadgen" "$scenario" --protocol mqtt --users "$users" "$@" \
    --targets "127.0.0.1:$MQ_PORT" --tokens "$(mqtt_tokens "$users")" --server-pid "$BROKER_PID" \
    --json "$OUT/$name.json" >&2 || echo "($name reported errors)" >&2
  stop_broker
}

# oc NAME SCENARIO USERS [loadgen flags...]: the same against a fresh node.
oc() {
  local name=$1 scenario=$2 users=$3; shift 3
  start_node "$users" --cores "${CORES:-$([[ ${PIN:-} == 1 ]] && echo 1 || echo 2)}"
  echo "   (load $(cut -d' ' -f1 /proc/loadavg))" >&2
  run "$name" "$scenario" --users "$users" "$@"
  stop_node
}

both() { mq "mosquitto-$1" "${@:2}"; oc "ourchat-$1" "${@:2}"; }

if [[ $MODE == full ]]; then
  # Up to twice the rate Mosquitto holds here: a knee at the sweep's top
  # is only a lower bound, and the goal is a ratio of knees.
  IDLE="1000 5000 19000"; USERS=10000; SECS=15
  RATES=${RATES:-"1000 2000 5000 10000 20000 30000 40000"}
  FANOUT="1000 5000"; FAN_DELIVERIES=100000; STORM=19000
else
  IDLE="1000 5000"; USERS=2000; RATES=${RATES:-"2000 5000"}; SECS=5; FANOUT="1000"
  FAN_DELIVERIES=20000
  STORM=5000
fi

want idle && for n in $IDLE; do
  both "idle-$n" idle "$n" --procs "$(procs_for "$n")" --ramp 20000 --duration "$IDLE_HOLD" --drain 0
done
# The disk's own fsync tail and CPU per fsync before and after the sweep:
# a durable row's p99 follows the disk's spell, so the table says which
# spell it met (BENCHMARKS.md, "1:1 side by side on `af24763`").
want p2p && scripts/fsync-tail.py "${TMPDIR:-/tmp}" 5 written >"$OUT/disk-before" 2>&1 || true
want p2p && for rate in $RATES; do
  both "p2p-$rate" p2p "$USERS" --procs 2 --rate "$rate" --duration "$SECS" --drain 3 --ramp 20000
  if [[ -n ${UNSYNCED:-} ]]; then
    NODE_SET="${NODE_SET:-} storage.durability=normal" \
      oc "unsynced-p2p-$rate" p2p "$USERS" --procs 2 --rate "$rate" --duration "$SECS" --drain 3 --ramp 20000
  fi
done
want p2p && scripts/fsync-tail.py "${TMPDIR:-/tmp}" 5 written >"$OUT/disk-after" 2>&1 || true
want fanout && for size in $FANOUT; do
  # Sends per second so that every size delivers about FAN_DELIVERIES/s.
  rate=$(( FAN_DELIVERIES / (size - 1) )); rate=$(( rate > 0 ? rate : 1 ))
  both "fanout-$size" group "$size" --group-size "$size" --procs 2 --rate "$rate" \
    --duration "$SECS" --drain 15 --ramp 20000
done
want storm && both "storm-$STORM" storm "$STORM" --procs "$(procs_for "$STORM")" --ramp 20000 --duration 60 --drain 0

python3 - "$OUT" <<'PY'
import json, os, sys
sys.path.insert(0, "scripts")
import commits  # scripts/commits.py
out = sys.argv[1]
def load(name):
    path = os.path.join(out, name + ".json")
    return json.load(open(path)) if os.path.exists(path) else None
names = sorted({f[len("ourchat-"):-5] for f in os.listdir(out) if f.startswith("ourchat-") and f.endswith(".json")},
               key=lambda n: (n.split("-")[0], int(n.split("-")[1])))
ms = lambda us: f"{us/1000:.1f}"
def cells(r):
    if r is None:
        return ["-"] * 5
    c, dl = r["counters"], r["send_to_deliver_us"]
    kind = r["scenario"]
    if kind == "idle":
        what = f"{r['server_bytes_per_connection']:.0f} B/conn" if r.get("server_bytes_per_connection") else "-"
        lat = "-"
    elif kind == "storm":
        logins = (c["logins"] - r["users"]) / r["phase_secs"] if r["phase_secs"] else 0
        what, lat = f"{logins:.0f} logins/s", "-"
    else:
        what = f"{r['deliveries_per_sec']:.0f} deliv/s"
        lat = f"{ms(dl['p50'])}/{ms(dl['p99'])}/{ms(dl['p999'])}" if dl["count"] else "-"
    lost = f"{r['lost']}/{c['duplicates']}/{c['out_of_order']}"
    cpu = r.get("server_cpu_us_per_delivered")
    cpu = f"{cpu:.1f}" if cpu and kind in ("p2p", "group") else "-"
    # The loadgen shares the machine: its share says how much was left.
    share = r.get("loadgen_cpu_share")
    share = f"{100 * share:.0f}%" if share is not None and kind != "idle" else "-"
    return [what, lat, lost, cpu, share]
def slowest_commit(name):
    return commits.slowest(os.path.join(out, "ourchat-" + name + ".metrics"))
def ratio(o, m, key):
    try:
        return f"{key(o) / key(m):.2f}x"
    except (TypeError, ZeroDivisionError, KeyError):
        return "-"
print("\nMosquitto: MQTT 3.1.1 QoS 1, acks in memory. OurChat: acks durable (fsync per batch). Both ack every delivery.")
print("commit max: the node's slowest store commit in the run (histogram bound) and, in brackets, how many took over 10 ms:")
print("a send waits for its batch's fsync, so one slow fsync of the disk holds every send behind it.")
for when in ("before", "after"):
    path = os.path.join(out, f"disk-{when}")
    if os.path.exists(path):
        lines = open(path).read().strip().splitlines()
        print(f"disk {when} the 1:1 rows (scripts/fsync-tail.py, 5 s): {lines[-1] if lines else '-'}")
print("lg: the loadgen's share of the CPUs it may run on over the run (the machine's; with PIN=1, its one CPU).")
if os.environ.get("PIN") == "1":
    print("PIN=1: one CPU each. Mosquitto, or the node on one reactor core with its worker threads, on CPU 0; the loadgen on CPU 1.")
print(f"{'run':<13} | {'Mosquitto':<16} {'deliver p50/p99/p999 ms':>24} {'lost/dup/ooo':>12} {'cpu µs':>7} {'lg':>4} | "
      f"{'OurChat':<16} {'deliver p50/p99/p999 ms':>24} {'lost/dup/ooo':>12} {'cpu µs':>7} {'lg':>4} {'commit max ms (>10)':>19} | "
      f"{'p99 O/M':>8} {'cpu O/M':>8} {'mem O/M':>8}")
# A row under the knee: nothing lost, deliveries counted, p99 under 10 ms.
holds = lambda r: bool(r and r["lost"] == 0 and r["send_to_deliver_us"]["count"]
                       and r["send_to_deliver_us"]["p99"] < 10_000)
knee = {"mosquitto": 0, "ourchat": 0}
for name in names:
    m, o = load("mosquitto-" + name), load("ourchat-" + name)
    mc, oc = cells(m), cells(o)
    p99 = ratio(o, m, lambda r: r["send_to_deliver_us"]["p99"]) if name.startswith(("p2p", "fanout")) else "-"
    cpu = ratio(o, m, lambda r: r["server_cpu_us_per_delivered"]) if name.startswith(("p2p", "fanout")) else "-"
    mem = ratio(o, m, lambda r: r["server_bytes_per_connection"]) if name.startswith("idle") else "-"
    commit = slowest_commit(name) if name.startswith(("p2p", "fanout")) else None
    commit = f"{commit[0]} ({commit[1]})" if commit else "-"
    print(f"{name:<13} | {mc[0]:<16} {mc[1]:>24} {mc[2]:>12} {mc[3]:>7} {mc[4]:>4} | "
          f"{oc[0]:<16} {oc[1]:>24} {oc[2]:>12} {oc[3]:>7} {oc[4]:>4} {commit:>19} | {p99:>8} {cpu:>8} {mem:>8}")
    if name.startswith("p2p"):
        rate = int(name.split("-")[1])
        for side, r in (("mosquitto", m), ("ourchat", o)):
            if holds(r):
                knee[side] = max(knee[side], rate)
m, o = knee["mosquitto"], knee["ourchat"]
top = max((int(name.split("-")[1]) for name in names if name.startswith("p2p")), default=0)
# A knee at the highest rate run is only a lower bound (and a ratio with it
# says less than it seems).
knee_of = lambda rate: ("<lowest" if not rate else f"≥{rate}" if rate == top else f"{rate}")
if top:
    print(f"\n1:1 knee (highest rate run with deliver p99 < 10 ms, nothing lost): Mosquitto {knee_of(m)} msg/s, "
          f"OurChat {knee_of(o)} msg/s" + (f", ratio {o / m:.2f}x" if m and o else "")
          + (" (a knee at the sweep's top is a lower bound)" if top in (m, o) else ""))
# UNSYNCED=1: the same 1:1 rows against a node that skips its fsyncs.
unsynced = sorted((int(f[len("unsynced-p2p-"):-5]), f[:-5]) for f in os.listdir(out)
                  if f.startswith("unsynced-p2p-") and f.endswith(".json"))
if unsynced:
    print("\nOurChat without fsyncs (durability = normal: an ack survives a process crash, not power loss),")
    print("run right after each row's durable run: what the node does when the disk's flushes cannot stall it.")
    print(f"{'run':<13} | {'OurChat unsynced':<16} {'deliver p50/p99/p999 ms':>24} {'lost/dup/ooo':>12} {'cpu µs':>7} {'lg':>4} | {'p99 U/M':>8} {'cpu U/M':>8}")
    unsynced_knee = 0
    for rate, name in unsynced:
        u, mosquitto = load(name), load(f"mosquitto-p2p-{rate}")
        uc = cells(u)
        p99 = ratio(u, mosquitto, lambda r: r["send_to_deliver_us"]["p99"])
        cpu = ratio(u, mosquitto, lambda r: r["server_cpu_us_per_delivered"])
        print(f"{'p2p-' + str(rate):<13} | {uc[0]:<16} {uc[1]:>24} {uc[2]:>12} {uc[3]:>7} {uc[4]:>4} | {p99:>8} {cpu:>8}")
        if holds(u):
            unsynced_knee = max(unsynced_knee, rate)
    print(f"1:1 knee without fsyncs: OurChat {knee_of(unsynced_knee)} msg/s against Mosquitto's {knee_of(m)}"
          + (f", ratio {unsynced_knee / m:.2f}x" if m and unsynced_knee else ""))
PY
