#!/usr/bin/env bash
# Throwaway cluster engines for tests and local cluster runs: MariaDB (two
# databases = two shards) with a read replica (a second MariaDB following
# the first's binlog), Redis and a Kafka-API broker (tansu, in memory), each
# on a free loopback port, all state under one directory.
#
#   scripts/engines.sh start DIR   install what is missing, start, write DIR/env
#   scripts/engines.sh stop DIR    stop everything started in DIR and delete it
#
# REPLICA=no skips the replica and the primary's binlog (benchmarks: on two
# cores a replica replaying every insert is a third engine in the way).
#
# DIR/env exports OURCHAT_TEST_MYSQL (comma-separated shard URLs; the same
# as a TOML list for storage.mysql_shards in OURCHAT_ENGINES_SHARDS),
# OURCHAT_TEST_MYSQL_REPLICA (the replica's server URL: same databases),
# OURCHAT_TEST_REDIS and OURCHAT_TEST_KAFKA; tests read those, so a developer
# can also start the engines once and point many test runs at them.
set -euo pipefail

command=${1:-}
dir=${2:-}
if [[ -z "$command" || -z "$dir" ]]; then
  echo "usage: $0 start|stop DIR" >&2
  exit 2
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_for_port() {
  local port=$1 what=$2
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "$what did not open port $port; its log:" >&2
  tail -n 30 "$dir/$what.log" >&2 || true
  return 1
}

install_missing() {
  local packages=()
  command -v mariadbd >/dev/null || [[ -x /usr/sbin/mariadbd ]] || packages+=(mariadb-server)
  command -v redis-server >/dev/null || packages+=(redis-server)
  # Not an engine: the stock protoc, which protocol/tests/protoc.rs checks
  # our .proto files against (every non-Rust toolchain compiles them with it).
  command -v protoc >/dev/null || packages+=(protobuf-compiler)
  if ((${#packages[@]})); then
    echo "installing ${packages[*]}" >&2
    if [[ $(id -u) -eq 0 ]]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}" >&2 ||
        { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}" >&2; }
    else
      sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}" >&2
    fi
  fi
  if ! command -v tansu >/dev/null && [[ ! -x "$HOME/.cargo/bin/tansu" ]]; then
    echo "installing tansu (a Kafka-API broker; one-time build)" >&2
    cargo install tansu --features dynostore --locked >&2
  fi
}

# start_mariadb NAME PORT [OPTION...]: a small, fast MariaDB on DIR/NAME.
start_mariadb() {
  local name=$1 port=$2
  shift 2
  mariadbd --no-defaults --datadir="$dir/$name" --user="$(id -un)" \
    --port="$port" --bind-address=127.0.0.1 --socket="$dir/$name.sock" \
    --pid-file="$dir/$name.pid" --skip-name-resolve --innodb-buffer-pool-size=64M \
    --innodb-log-file-size=32M --innodb-flush-log-at-trx-commit=2 --max-connections=500 \
    "$@" >"$dir/$name.log" 2>&1 &
  echo $! >"$dir/$name.pid.shell"
}

start() {
  install_missing
  export PATH="$HOME/.cargo/bin:/usr/sbin:$PATH"
  # Engines left running in DIR by an interrupted run would hold its files.
  stop
  rm -rf "$dir"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)

  local mysql_port replica_port redis_port kafka_port
  mysql_port=$(free_port)
  replica_port=$(free_port)
  redis_port=$(free_port)
  kafka_port=$(free_port)

  # MariaDB: fast and small for tests (the durability of an engine is not
  # what these tests check; OurChat's own acks are).
  # The replica replays the primary's binlog from its first statement, so
  # databases, users and every test's shards reach it without set-up.
  local name names=(mysql) binlog=() with_replica=${REPLICA:-yes}
  if [[ "$with_replica" != no ]]; then
    names+=(replica)
    binlog=(--log-bin="$dir/mysql/binlog" --binlog-format=ROW)
  fi
  # One after the other: two bootstraps at once collide on temporary
  # tables in /tmp (measured: "Unknown table 'mysql.tmp_user_sys'").
  for name in "${names[@]}"; do
    mariadb-install-db --no-defaults --datadir="$dir/$name" --user="$(id -un)" \
      --auth-root-authentication-method=socket --skip-test-db >"$dir/$name-install.log" 2>&1 ||
      { echo "mariadb-install-db failed; its log:" >&2; tail -n 20 "$dir/$name-install.log" >&2; return 1; }
  done
  start_mariadb mysql "$mysql_port" --server-id=1 "${binlog[@]}"
  wait_for_port "$mysql_port" mysql
  mariadb --no-defaults --socket="$dir/mysql.sock" -u root <<'SQL'
CREATE DATABASE ourchat_shard0;
CREATE DATABASE ourchat_shard1;
CREATE USER 'ourchat'@'127.0.0.1' IDENTIFIED BY 'ourchat';
CREATE USER 'ourchat'@'localhost' IDENTIFIED BY 'ourchat';
GRANT ALL ON `ourchat%`.* TO 'ourchat'@'127.0.0.1', 'ourchat'@'localhost';
-- Tests pause the replica's replication to see which server answered.
GRANT REPLICATION SLAVE ADMIN ON *.* TO 'ourchat'@'127.0.0.1';
CREATE USER 'replication'@'127.0.0.1' IDENTIFIED BY 'replication';
GRANT REPLICATION SLAVE ON *.* TO 'replication'@'127.0.0.1';
SQL
  local replica_env=""
  if [[ "$with_replica" != no ]]; then
    start_mariadb replica "$replica_port" --server-id=2 --read-only
    wait_for_port "$replica_port" replica
    mariadb --no-defaults --socket="$dir/replica.sock" -u root <<SQL
CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=$mysql_port,
  MASTER_USER='replication', MASTER_PASSWORD='replication', MASTER_USE_GTID=slave_pos;
START SLAVE;
SQL
    replica_env="export OURCHAT_TEST_MYSQL_REPLICA=mysql://ourchat:ourchat@127.0.0.1:$replica_port"
  fi

  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --save '' \
    --appendonly no --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
  wait_for_port "$redis_port" redis

  tansu broker --storage-engine memory://tansu/ \
    --listener-url "tcp://127.0.0.1:$kafka_port" \
    --advertised-listener-url "tcp://127.0.0.1:$kafka_port" >"$dir/tansu.log" 2>&1 &
  echo $! >"$dir/tansu.pid"
  wait_for_port "$kafka_port" tansu

  local mysql="mysql://ourchat:ourchat@127.0.0.1:$mysql_port"
  cat >"$dir/env" <<ENV
export OURCHAT_TEST_MYSQL=$mysql/ourchat_shard0,$mysql/ourchat_shard1
export OURCHAT_ENGINES_SHARDS='["$mysql/ourchat_shard0", "$mysql/ourchat_shard1"]'
$replica_env
export OURCHAT_TEST_REDIS=redis://127.0.0.1:$redis_port
export OURCHAT_TEST_KAFKA=127.0.0.1:$kafka_port
export OURCHAT_TEST_ENGINES_DIR=$dir
ENV
  local replica_note=""
  [[ "$with_replica" != no ]] && replica_note=" (replica :$replica_port)"
  echo "engines up in $dir: mariadb :$mysql_port$replica_note," \
    "redis :$redis_port, tansu :$kafka_port" >&2
}

stop() {
  [[ -d "$dir" ]] || return 0
  # mariadb.pid.shell: the primary's name before the replica came.
  for pidfile in "$dir/tansu.pid" "$dir/redis.pid" "$dir/replica.pid.shell" \
    "$dir/mysql.pid.shell" "$dir/mariadb.pid.shell"; do
    if [[ -f "$pidfile" ]]; then
      kill "$(cat "$pidfile")" 2>/dev/null || true
    fi
  done
  # MariaDB flushes on TERM; give it a moment before the directory goes.
  local name
  for name in mysql replica mariadb; do
    for _ in $(seq 1 50); do
      [[ -f "$dir/$name.pid" ]] && kill -0 "$(cat "$dir/$name.pid" 2>/dev/null)" 2>/dev/null || break
      sleep 0.1
    done
  done
  rm -rf "$dir"
}

case "$command" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
