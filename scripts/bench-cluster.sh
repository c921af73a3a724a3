#!/usr/bin/env bash
# Cluster-mode throughput on this machine: throwaway engines (MariaDB with
# two shard databases, Redis, tansu), two release nodes, and ourchat-loadgen
# p2p spread over both nodes at a fixed open-loop rate.
#   scripts/bench-cluster.sh [USERS] [RATE] [SECS]     (default 2000 2000 15)
# Prints the loadgen summary; the JSON is in target/bench/cluster-p2p.json.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${1:-2000}; RATE=${2:-2000}; SECS=${3:-15}
ENGINES=target/bench-engines
OUT=target/bench; mkdir -p "$OUT"
cargo build --release --bin ourchat --bin ourchat-loadgen >&2
REPLICA=no scripts/engines.sh start "$ENGINES"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  scripts/engines.sh stop "$ENGINES"
  [[ -n ${KEEP_DATA:-} || -z ${DATA:-} ]] || rm -rf -- "$DATA"
}
trap cleanup EXIT
# shellcheck disable=SC1090
. "$ENGINES/env"
DATA=$(mktemp -d "${TMPDIR:-/tmp}/ourchat-cluster-bench.XXXXXX")
export OURCHAT_AUTH__JWT_SECRET=cluster-bench-secret-0123456789
COMMON=(--config config/cluster.toml --set "storage.mysql_shards=$OURCHAT_ENGINES_SHARDS"
  --set "cluster.redis=$OURCHAT_TEST_REDIS" --set "cluster.kafka=$OURCHAT_TEST_KAFKA"
  --set server.pin_cores=false --set storage.readers=1)
target/release/ourchat admin provision --count "$USERS" --out "$DATA/tokens" \
  --data-dir "$DATA" "${COMMON[@]}" 2>/dev/null
for node in 1 2; do
  target/release/ourchat serve "${COMMON[@]}" --data-dir "$DATA/node$node" --cores 1 \
    --listen "127.0.0.1:500${node}3" --set "server.grpc_listen=" \
    --set "server.admin_listen=127.0.0.1:91${node}0" --set "server.node_id=$node" \
    >"$DATA/node$node.log" 2>&1 &
  PIDS+=($!)
done
for node in 1 2; do
  for _ in $(seq 200); do
    curl -sf "http://127.0.0.1:91${node}0/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
done
target/release/ourchat-loadgen p2p --targets 127.0.0.1:50013,127.0.0.1:50023 \
  --tokens "$DATA/tokens" --procs 1 --rate "$RATE" --duration "$SECS" --drain 3 \
  --json "$OUT/cluster-p2p.json"
for node in 1 2; do
  echo "node $node:"; curl -s "http://127.0.0.1:91${node}0/metrics" |
    grep -E '^ourchat_(feeder_records|feeder_batches|seq_requests|seq_sends|remote_messages|log_failed)_total' | sed 's/^/  /'
done
