#!/bin/bash
# usage: bench/etcd.sh [WORKLOAD [CLIENTS [SECONDS]]]  (put, 64, 8)
# The same loadgen run against three etcd members (loadgen's etcd-cluster.sh; etcd 3.4 from
# Debian's packages, see loadgen's README), measured the same way.
set -u
. "$(dirname "$0")/common.sh"
W=${1:-put}; C=${2:-64}; T=${3:-8}
D=/tmp/etcd-bench
trap '[ -n "$SAMPLER" ] && kill $SAMPLER 2> /dev/null; "$ETCD_CLUSTER" stop $D > /dev/null 2>&1' EXIT
"$ETCD_CLUSTER" stop $D > /dev/null 2>&1
"$ETCD_CLUSTER" start $D > /dev/null || exit 1
sleep 2
start_sampler $(cat $D/e*.pid)
/usr/bin/time -f "loadgen cpu %U %S" "$LOADGEN" --target etcd \
  --endpoints 127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793 \
  --clients "$C" --conns 4 --duration "$T" --workload "$W" > /tmp/bench-lge.out 2> /tmp/bench-lge.err
END=$(date +%s.%N)
head -1 /tmp/bench-lge.out
ops=$(grep -o '"ops_per_s":[0-9.]*' /tmp/bench-lge.out | cut -d: -f2)
cpu_per_op "$END" "$T" "$ops"
loadgen_cpu_per_op "$W" /tmp/bench-lge.err "$ops" "$T"
