# Shared by the bench scripts: where things are, a fresh `kvctl dev` cluster, CPU sampling.
# BIN: the directory holding kvctl (default: this repository's target/release).
# LOADGEN: the loadgen binary (default: ../shared/loadgen beside this repository).
# ETCD_CLUSTER: loadgen's etcd-cluster.sh (default: beside loadgen's sources).
# NODEENV: a command prefix for the cluster, such as "env KV_SNAPSHOT_ENTRIES=10000".
# CLIENTS=plain: the nodes serve clients over plain TCP with no access policy, as etcd runs
#   under loadgen (peers keep mutual TLS); the default is `kvctl dev`'s mutual TLS and policy.
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${BIN:-$HERE/../target/release}
LOADGEN=${LOADGEN:-$HERE/../../shared/loadgen/target/release/loadgen}
ETCD_CLUSTER=${ETCD_CLUSTER:-$HERE/../../shared/loadgen/etcd-cluster.sh}
DEV_DIR=${DEV_DIR:-/tmp/benchdev}
BASE_PORT=24790
ENDPOINTS=127.0.0.1:$((BASE_PORT + 1)),127.0.0.1:$((BASE_PORT + 2)),127.0.0.1:$((BASE_PORT + 3))
DEV=
SAMPLER=

# Starts a three-node cluster in $DEV_DIR (after the one a previous run left there has
# stopped); sets DEV (its pid) and NODE_PIDS (its nodes). Exits if it does not come up.
start_dev() {
  local pattern="kvctl dev --dir $DEV_DIR --base-port"
  pkill -INT -f "$pattern"
  for _ in $(seq 1 150); do pgrep -f "$pattern" > /dev/null || break; sleep 0.1; done
  rm -rf "$DEV_DIR"
  ${NODEENV:-} "$BIN/kvctl" dev --dir "$DEV_DIR" --base-port $BASE_PORT > "$DEV_DIR.out" 2>&1 &
  DEV=$!
  for _ in $(seq 1 100); do grep -q KVCTL_ENDPOINTS "$DEV_DIR.out" 2>/dev/null && break; sleep 0.2; done
  sleep 3 # an election, and the members' own rows written
  NODE_PIDS=$(pgrep -P "$DEV" | tr '\n' ' ')
  if [ "$(echo $NODE_PIDS | wc -w)" != 3 ]; then
    echo "the cluster did not come up (nodes: '$NODE_PIDS'); see $DEV_DIR.out" >&2
    stop_dev
    exit 1
  fi
}

stop_dev() {
  [ -n "$DEV" ] && kill -INT "$DEV" 2> /dev/null && wait "$DEV" 2> /dev/null
  DEV=
  [ -n "${PLAIN_PIDS:-}" ] && kill -TERM $PLAIN_PIDS 2> /dev/null && wait $PLAIN_PIDS 2> /dev/null
  PLAIN_PIDS=
}

# Like start_dev, with clients over plain TCP and no access policy (CLIENTS=plain): the
# three nodes are started here with `kvctl dev`'s other flags (one thread each, batch
# scheduling on 2 cores), peers over mutual TLS with certificates from `kvctl certs`.
# Sets NODE_PIDS.
start_plain() {
  pkill -TERM -f "kvctl node --name=p[123] " 2> /dev/null
  for _ in $(seq 1 150); do pgrep -f "kvctl node --name=p[123] " > /dev/null || break; sleep 0.1; done
  rm -rf "$DEV_DIR" && mkdir -p "$DEV_DIR"
  local certs=$DEV_DIR/certs i cluster=
  "$BIN/kvctl" certs --dir "$certs" --nodes p1,p2,p3 > /dev/null || exit 1
  for i in 1 2 3; do cluster="$cluster${cluster:+,}p$i=127.0.0.1:$((BASE_PORT + 10 + i))"; done
  PLAIN_PIDS=
  for i in 1 2 3; do
    ${NODEENV:-} "$BIN/kvctl" node --name=p$i --initial-cluster=$cluster --data-dir="$DEV_DIR/p$i" \
      --listen-peer-address=127.0.0.1:$((BASE_PORT + 10 + i)) \
      --listen-client-address=127.0.0.1:$((BASE_PORT + i)) \
      --peer-cert-file="$certs/p$i.pem" --peer-key-file="$certs/p$i-key.pem" \
      --peer-trusted-ca-file="$certs/ca.pem" --threads=1 --scheduling=batch \
      --listen-metrics-address=127.0.0.1:$((BASE_PORT + 20 + i)) \
      < /dev/null > /dev/null 2> "$DEV_DIR/p$i.log" &
    PLAIN_PIDS="$PLAIN_PIDS $!"
  done
  sleep 4 # an election, and the members' own rows written
  NODE_PIDS=$PLAIN_PIDS
}

# Saves each node's metrics (CLIENTS=plain, which serves them) as $DEV_DIR/metrics-pN.
save_metrics() {
  local i
  for i in 1 2 3; do
    python3 -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$((BASE_PORT + 20 + i))/metrics').read().decode())" \
      > "$DEV_DIR/metrics-p$i" 2> /dev/null
  done
}

# Sum of user and system clock ticks of the processes given.
cpu_ticks() {
  local sum=0 p
  for p in "$@"; do set -- $(cut -d' ' -f14,15 /proc/$p/stat); sum=$((sum + $1 + $2)); done
  echo $sum
}

# Samples the CPU of the processes given every 250 ms into /tmp/bench-cpu; sets SAMPLER.
start_sampler() {
  ( while true; do echo "$(date +%s.%N) $(cpu_ticks "$@")"; sleep 0.25; done ) 2> /dev/null > /tmp/bench-cpu &
  SAMPLER=$!
}

# Prints the sampled processes' CPU per operation over the timed part of a run of SECONDS
# that ended at END (loadgen writes the keys of a get workload before it starts timing).
cpu_per_op() { # END SECONDS OPS_PER_SECOND
  kill "$SAMPLER" 2> /dev/null; SAMPLER=
  python3 - "$1" "$2" "$3" "$(getconf CLK_TCK)" <<'PY'
import sys
end, secs, ops, tick = map(float, sys.argv[1:])
rows = [tuple(map(float, l.split())) for l in open('/tmp/bench-cpu') if len(l.split()) == 2]
timed = [r for r in rows if end - secs + 0.5 <= r[0] <= end - 0.3]
(t0, c0), (t1, c1) = timed[0], timed[-1]
print('server cpu/op us: %.1f (cores busy %.2f)' % ((c1 - c0) / tick * 1e6 / (ops * (t1 - t0)), (c1 - c0) / tick / (t1 - t0)))
PY
}

# Prints loadgen's CPU per operation (puts only: for gets it would include the keys written
# before the timed part).
loadgen_cpu_per_op() { # WORKLOAD TIME_OUTPUT OPS_PER_SECOND SECONDS
  [ "$1" = put ] || return 0
  grep "loadgen cpu" "$2" | python3 -c "import sys; u,s=map(float,sys.stdin.read().split()[2:4]); print('loadgen cpu/op us: %.1f' % ((u+s)*1e6/($3*$4)))"
}

# Runs loadgen against TARGET (native or etcd) while the processes given to start_sampler
# are sampled, then prints loadgen's line, the servers' CPU per operation over the timed
# part, and loadgen's own (puts).
run_loadgen() { # TARGET WORKLOAD CLIENTS SECONDS [LOADGEN ARGS...]
  local target=$1 workload=$2 clients=$3 secs=$4 end ops
  shift 4
  /usr/bin/time -f "loadgen cpu %U %S" "$LOADGEN" --target "$target" "$@" \
    --clients "$clients" --conns 4 --duration "$secs" --workload "$workload" \
    > /tmp/bench-lg.out 2> /tmp/bench-lg.err
  end=$(date +%s.%N)
  head -1 /tmp/bench-lg.out
  ops=$(grep -o '"ops_per_s":[0-9.]*' /tmp/bench-lg.out | cut -d: -f2)
  cpu_per_op "$end" "$secs" "$ops"
  loadgen_cpu_per_op "$workload" /tmp/bench-lg.err "$ops" "$secs"
}
