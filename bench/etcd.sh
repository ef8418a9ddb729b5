#!/bin/bash
# usage: bench/etcd.sh [WORKLOAD [CLIENTS [SECONDS]]]  (put, 64, 8)
# The same loadgen run against three etcd members (loadgen's etcd-cluster.sh; etcd 3.4 from
# Debian's packages, see loadgen's README), measured the same way.
set -u
. "$(dirname "$0")/common.sh"
W=${1:-put}; C=${2:-64}; T=${3:-8}
D=/tmp/etcd-bench
# Stops the members and waits until they are gone (one may take seconds), so that the next
# run finds its ports free.
stop_etcd() {
  "$ETCD_CLUSTER" stop $D > /dev/null 2>&1
  for _ in $(seq 1 150); do pgrep -f "etcd --name e. --data-dir $D/" > /dev/null || break; sleep 0.1; done
}
trap '[ -n "$SAMPLER" ] && kill $SAMPLER 2> /dev/null; stop_etcd' EXIT
stop_etcd
"$ETCD_CLUSTER" start $D > /dev/null || exit 1
sleep 2
start_sampler $(cat $D/e*.pid)
run_loadgen etcd "$W" "$C" "$T" --endpoints 127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793
