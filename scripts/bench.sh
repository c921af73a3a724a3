#!/usr/bin/env bash
# OurChat benchmarks: each figure on a fresh node (release build, embedded
# store in a temporary directory, on this machine's loopback), driven by
# ourchat-loadgen. Prints a table at the end; every run's JSON is kept in
# $OUT (default target/bench). Usage:
#   scripts/bench.sh           # short: a few minutes, what `make bench` runs
#   scripts/bench.sh full      # the BENCHMARKS.md figures
#   ONLY="idle tls" scripts/bench.sh full   # some of them: idle ws p2p p2pmore group storm tls store
#   P2P_RATES="2000 5000" ONLY=p2p scripts/bench.sh full   # the 1:1 sweep at these rates
#   NODE_SET="storage.backend=sqlite" ...   # extra `--set`s for every node (space-separated)
#   BIN=/tmp/build-a ...                      # run those binaries instead of building
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-short}
OUT=${OUT:-target/bench}
mkdir -p "$OUT"
# BIN=DIR runs binaries built elsewhere (an A/B of two builds); else build.
if [[ -z ${BIN:-} ]]; then
  BIN=target/release
  cargo build --release --bin ourchat --bin ourchat-loadgen >&2
fi

# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

if [[ $MODE == full ]]; then
  IDLE_SIZES="1000 5000 19000"; TLS_USERS=19000; P2P_USERS=10000; P2P_RATES=${P2P_RATES:-"2000 5000 7500 10000"}
  P2P_SECS=15; STORM_USERS=19000; GROUP_SIZE=5000; GROUP_RATES="10 20 40"
else
  IDLE_SIZES="1000 5000"; TLS_USERS=5000; P2P_USERS=2000; P2P_RATES="5000"; P2P_SECS=5; STORM_USERS=5000
  GROUP_SIZE=1000; GROUP_RATES="20"
fi

want idle && for n in $IDLE_SIZES; do
  start_node "$n" --cores 2
  run "idle-$n" idle --users "$n" --procs "$(procs_for "$n")" --threads 1 --ramp 20000 --duration "$IDLE_HOLD" --drain 0
done
# Browsers' WebSocket listener beside TCP: memory per idle connection.
want ws && for n in $IDLE_SIZES; do
  WS_PORT=$(free_port)
  start_node "$n" --cores 2 --set "server.ws_listen=127.0.0.1:$WS_PORT"
  TARGET="127.0.0.1:$WS_PORT" run "wsidle-$n" idle --ws --users "$n" --procs "$(procs_for "$n")" \
    --threads 1 --ramp 20000 --duration "$IDLE_HOLD" --drain 0
done
want p2p && for rate in $P2P_RATES; do
  start_node "$P2P_USERS" --cores 2
  run "p2p-$rate" p2p --users "$P2P_USERS" --procs 2 --rate "$rate" --duration "$P2P_SECS" --drain 3 --ramp 20000 --heartbeat 30
done
if [[ $MODE == full ]] && want p2pmore; then
  # Acks that survive a process crash but not power loss (no fsync per commit).
  start_node "$P2P_USERS" --cores 2 --set storage.durability=normal
  run "p2pnormal-10000" p2p --users "$P2P_USERS" --procs 2 --rate 10000 --duration "$P2P_SECS" --drain 3 --ramp 20000
  # Every send to a random user: nearly every send opens a new conversation.
  start_node "$P2P_USERS" --cores 2
  run "p2prandom-5000" p2p --users "$P2P_USERS" --procs 2 --rate 5000 --peers 0 --duration "$P2P_SECS" --drain 3 --ramp 20000
fi
# One group of GROUP_SIZE members, all online: each send fans out to all
# but the sender.
want group && for rate in $GROUP_RATES; do
  start_node "$GROUP_SIZE" --cores 2
  # Drained 15 s, as `bench-peers` does: a row that falls behind shows its
  # backlog as latency, not as loss.
  run "group-$rate" group --users "$GROUP_SIZE" --group-size "$GROUP_SIZE" --procs 2 --rate "$rate" \
    --duration "$P2P_SECS" --drain 15 --ramp 20000
done
want storm && start_node "$STORM_USERS" --cores 2
want storm && run "storm-$STORM_USERS" storm --users "$STORM_USERS" --procs "$(procs_for "$STORM_USERS")" --ramp 20000 --duration 60 --drain 0
# The same over TLS (ourchat gen-cert's ECDSA P-256 pair): memory per idle
# TLS connection, and full handshakes + token logins per second in a storm.
CERTS=$(mktemp -d "${TMPDIR:-/tmp}/ourchat-certs.XXXXXX")
"$BIN/ourchat" gen-cert --out "$CERTS" >/dev/null
want tls && for scenario in idle storm; do
  TLS_PORT=$(free_port)
  start_node "$TLS_USERS" --cores 2 --set "tls.listen=127.0.0.1:$TLS_PORT" \
    --set "tls.cert_file=$CERTS/cert.pem" --set "tls.key_file=$CERTS/key.pem"
  duration=$IDLE_HOLD; [[ $scenario == storm ]] && duration=60
  TARGET="127.0.0.1:$TLS_PORT" run "tls${scenario}-$TLS_USERS" "$scenario" --users "$TLS_USERS" \
    --procs "$(procs_for "$TLS_USERS")" --ramp 20000 --duration "$duration" --drain 0 --ca-file "$CERTS/ca.pem"
done
stop_node

python3 - "$OUT" <<'PY'
import json, glob, os, sys
out = sys.argv[1]
print(f"\n{'run':<14} {'users':>6} {'bytes/conn':>10} {'acked/s':>9} {'deliv/s':>9} {'ack p50/p99 ms':>15} {'deliver p50/p99/p999 ms':>24} {'lost/dup/ooo':>12} {'logins/s':>9} {'cpu µs/deliv':>12}")
def key(p):
    name = os.path.basename(p)[:-5]; kind, _, n = name.partition("-")
    return (kind, int(n) if n.isdigit() else 0)
for path in sorted(glob.glob(os.path.join(out, "*.json")), key=key):
    r = json.load(open(path)); c = r["counters"]; name = os.path.basename(path)[:-5]
    ms = lambda v: f"{v/1000:.1f}"
    ack, dl = r["send_to_ack_us"], r["send_to_deliver_us"]
    bpc = r.get("server_bytes_per_connection")
    logins = (c["logins"] - r["users"]) / r["phase_secs"] if r["scenario"] == "storm" and r["phase_secs"] else 0
    print(f"{name:<14} {r['users']:>6} {bpc and f'{bpc:.0f}' or '-':>10} "
          f"{r['acks_per_sec']:>9.0f} {r['deliveries_per_sec']:>9.0f} {(ms(ack['p50'])+'/'+ms(ack['p99'])) if ack['count'] else '-':>15} "
          f"{(ms(dl['p50'])+'/'+ms(dl['p99'])+'/'+ms(dl['p999'])) if dl['count'] else '-':>24} "
          f"{str(r['lost'])+'/'+str(c['duplicates'])+'/'+str(c['out_of_order']):>12} {logins or '-':>9} "
          f"{(lambda u: f'{u:.1f}' if u and dl['count'] else '-')(r.get('server_cpu_us_per_delivered')):>12}")
PY

# The message store's candidates on the node's operation mix (storage
# crate's store_mix bench): a quarter of the counts in the short mode.
if want store; then
  echo "== store" >&2
  scale=0.25; [[ $MODE == full ]] && scale=1
  STORE_BENCH_SCALE=$scale STORE_BENCH_DIR=${TMPDIR:-/tmp} \
    cargo bench -q -p ourchat-storage --bench store_mix
fi
