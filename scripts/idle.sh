#!/usr/bin/env bash
# Server memory per idle, logged-in connection: USERS (19,000) connections
# log in by token and stay silent for 16 s (long enough to park) against a
# fresh node, and the node's RSS growth per connection is read near the
# end. BIN: the binaries' folder; NODE_SET: node settings.
#   BIN=target/release scripts/idle.sh
#   NODE_SET="server.move_to_user_core=false" USERS=5000 scripts/idle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
OUT=$(mktemp -d "${TMPDIR:-/tmp}/ourchat-idle.XXXXXX")
. scripts/bench-lib.sh
start_node ${USERS:-19000} --cores 2
run run idle --users "${USERS:-19000}" --procs 2 --ramp 20000 --duration 16 --drain 0
python3 -c "import json; r = json.load(open('$OUT/run.json')); print(round(r['server_bytes_per_connection']), 'bytes per idle connection')"
