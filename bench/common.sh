# Shared by the bench scripts: where things are, and a fresh `kvctl dev` cluster.
# BIN: the directory holding kvctl (default: this repository's target/release).
# LOADGEN: the loadgen binary (default: ../shared/loadgen beside this repository).
# NODEENV: a command prefix for the cluster, such as "env KV_SNAPSHOT_ENTRIES=100000".
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${BIN:-$HERE/../target/release}
LOADGEN=${LOADGEN:-$HERE/../../shared/loadgen/target/release/loadgen}
DEV_DIR=${DEV_DIR:-/tmp/benchdev}
BASE_PORT=24790
ENDPOINTS=127.0.0.1:24791,127.0.0.1:24792,127.0.0.1:24793

# Starts a three-node cluster in $DEV_DIR; sets DEV (its pid) and NODE_PIDS.
start_dev() {
  pkill -f "kvctl dev --dir $DEV_DIR" ; sleep 1
  rm -rf "$DEV_DIR"
  ${NODEENV:-} "$BIN/kvctl" dev --dir "$DEV_DIR" --base-port $BASE_PORT > "$DEV_DIR.out" 2>&1 &
  DEV=$!
  for _ in $(seq 1 100); do grep -q KVCTL_ENDPOINTS "$DEV_DIR.out" 2>/dev/null && break; sleep 0.2; done
  sleep 3 # an election, and the members' own rows written
  NODE_PIDS=$(pgrep -f "kvctl node --name" | tr '\n' ' ')
}

stop_dev() {
  kill -INT "$DEV"; wait "$DEV" 2>/dev/null
}

# Sum of user and system clock ticks of the processes given.
cpu_ticks() {
  local sum=0 p
  for p in "$@"; do set -- $(cut -d' ' -f14,15 /proc/$p/stat); sum=$((sum + $1 + $2)); done
  echo $sum
}
