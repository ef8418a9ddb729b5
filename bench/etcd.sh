#!/bin/bash
# usage: bench/etcd.sh [WORKLOAD [CLIENTS [SECONDS]]]  (put, 64, 8)
# The same loadgen run against three etcd members (loadgen/etcd-cluster.sh; etcd 3.4 from
# Debian's packages, see loadgen's README).
set -u
. "$(dirname "$0")/common.sh"
W=${1:-put}; C=${2:-64}; T=${3:-8}
CLUSTER=$(dirname "$LOADGEN")/../../etcd-cluster.sh
D=/tmp/etcd-bench
"$CLUSTER" stop $D >/dev/null 2>&1
"$CLUSTER" start $D >/dev/null || exit 1
sleep 2
PIDS=$(cat $D/e*.pid | tr '\n' ' ')
before=$(cpu_ticks $PIDS)
/usr/bin/time -f "loadgen cpu %U %S" "$LOADGEN" --target etcd \
  --endpoints 127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793 \
  --clients "$C" --conns 4 --duration "$T" --workload "$W" > /tmp/bench-lge.out 2> /tmp/bench-lge.err
after=$(cpu_ticks $PIDS)
head -1 /tmp/bench-lge.out
ops=$(grep -o '"ops_per_s":[0-9.]*' /tmp/bench-lge.out | cut -d: -f2)
python3 -c "print('server cpu/op us: %.1f' % (($after - $before) / $(getconf CLK_TCK) * 1e6 / ($ops * $T)))"
grep "loadgen cpu" /tmp/bench-lge.err | python3 -c "import sys; u,s=map(float,sys.stdin.read().split()[2:4]); print('loadgen cpu/op us: %.1f' % ((u+s)*1e6/($ops*$T)))"
"$CLUSTER" stop $D >/dev/null 2>&1
