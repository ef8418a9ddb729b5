#!/bin/bash
# usage: bench/kvctl-bench.sh
# `kvctl bench` on a fresh `kvctl dev` cluster: puts at 1, 16, 64 and 256 clients, then
# linearizable gets at 64 (8 s each); one JSON line each.
. "$(dirname "$0")/common.sh"
trap stop_dev EXIT
start_dev
eval "$(grep '^  export KVCTL_' "$DEV_DIR.out")"
for c in 1 16 64 256; do
  echo "put $c: $("$BIN/kvctl" bench --workload put --clients $c --duration 8 --output json 2>&1 | tail -1)"
done
echo "get 64: $("$BIN/kvctl" bench --workload get --clients 64 --duration 8 --output json 2>&1 | tail -1)"
stop_dev
