#!/bin/bash
# usage: [CLIENTS=plain] bench/ours.sh [WORKLOAD [CLIENTS [SECONDS]]]  (put, 64, 8)
# loadgen against a fresh `kvctl dev` cluster (or, with CLIENTS=plain, the same three nodes
# serving clients over plain TCP with no access policy, as etcd runs; see common.sh). Prints
# loadgen's line, then the servers' CPU per operation over the timed part of the run, and
# loadgen's (puts).
set -u
. "$(dirname "$0")/common.sh"
W=${1:-put}; C=${2:-64}; T=${3:-8}
trap '[ -n "$SAMPLER" ] && kill $SAMPLER 2> /dev/null; stop_dev' EXIT
if [ "${CLIENTS:-}" = plain ]; then
  start_plain
  start_sampler $NODE_PIDS
  run_loadgen native "$W" "$C" "$T" --endpoints $ENDPOINTS
  save_metrics
else
  start_dev
  start_sampler $NODE_PIDS
  certs=$DEV_DIR/certs
  run_loadgen native "$W" "$C" "$T" --endpoints $ENDPOINTS \
    --cacert $certs/ca.pem --cert $certs/client-root.pem --key $certs/client-root-key.pem
fi
