#!/bin/bash
# usage: bench/ours.sh [WORKLOAD [CLIENTS [SECONDS]]]  (put, 64, 8)
# loadgen against a fresh `kvctl dev` cluster. Prints loadgen's line, then the servers' CPU
# per operation over the timed part of the run, and loadgen's (puts).
set -u
. "$(dirname "$0")/common.sh"
W=${1:-put}; C=${2:-64}; T=${3:-8}
trap '[ -n "$SAMPLER" ] && kill $SAMPLER 2> /dev/null; stop_dev' EXIT
start_dev
start_sampler $NODE_PIDS
certs=$DEV_DIR/certs
/usr/bin/time -f "loadgen cpu %U %S" "$LOADGEN" --target native --endpoints $ENDPOINTS \
  --cacert $certs/ca.pem --cert $certs/client-root.pem --key $certs/client-root-key.pem \
  --clients "$C" --conns 4 --duration "$T" --workload "$W" > /tmp/bench-lg.out 2> /tmp/bench-lg.err
END=$(date +%s.%N)
head -1 /tmp/bench-lg.out
ops=$(grep -o '"ops_per_s":[0-9.]*' /tmp/bench-lg.out | cut -d: -f2)
cpu_per_op "$END" "$T" "$ops"
loadgen_cpu_per_op "$W" /tmp/bench-lg.err "$ops" "$T"
