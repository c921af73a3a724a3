#!/usr/bin/env bash
# Runs node N of a local cluster on the engines `make engines` started
# (target/engines/env): clients on 127.0.0.1:500N3, gRPC :500N4, admin
# (/metrics) :91N0, data (token key) in target/cluster-nodeN.
#
#   make engines                  # MariaDB (2 shards), Redis, tansu
#   scripts/cluster-node.sh 1 &   # node 1: clients on 127.0.0.1:50013
#   scripts/cluster-node.sh 2 &   # node 2: clients on 127.0.0.1:50023
set -euo pipefail
cd "$(dirname "$0")/.."
node=${1:?usage: $0 NODE_NUMBER (1-9) [extra ourchat flags]}
shift
env_file=${ENGINES_DIR:-target/engines}/env
if [[ ! -f "$env_file" ]]; then
  echo "no engines: run 'make engines' first" >&2
  exit 1
fi
# shellcheck disable=SC1090
. "$env_file"
binary=target/release/ourchat
[[ -x $binary ]] || cargo build --release --bin ourchat
# Every node of a deployment shares one token secret.
export OURCHAT_AUTH__JWT_SECRET=${OURCHAT_AUTH__JWT_SECRET:-local-cluster-secret-change-me}
exec "$binary" serve --config config/cluster.toml \
  --data-dir "target/cluster-node$node" \
  --listen "127.0.0.1:500${node}3" \
  --set "server.grpc_listen=127.0.0.1:500${node}4" \
  --set "server.admin_listen=127.0.0.1:91${node}0" \
  --set "server.node_id=$node" \
  --set "storage.mysql_shards=$OURCHAT_ENGINES_SHARDS" \
  --set "cluster.redis=$OURCHAT_TEST_REDIS" \
  --set "cluster.kafka=$OURCHAT_TEST_KAFKA" \
  "$@"
