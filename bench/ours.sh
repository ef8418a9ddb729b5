#!/bin/bash
# usage: bench/ours.sh [WORKLOAD [CLIENTS [SECONDS]]]  (put, 64, 8)
# loadgen against a fresh `kvctl dev` cluster. Prints loadgen's line, then the servers' CPU
# per operation over the timed part of the run (for gets, loadgen first writes the keys).
set -u
. "$(dirname "$0")/common.sh"
W=${1:-put}; C=${2:-64}; T=${3:-8}
start_dev
( while true; do echo "$(date +%s.%N) $(cpu_ticks $NODE_PIDS)"; sleep 0.25; done ) > /tmp/bench-cpu &
SAMPLER=$!
certs=$DEV_DIR/certs
/usr/bin/time -f "loadgen cpu %U %S" "$LOADGEN" --target native --endpoints $ENDPOINTS \
  --cacert $certs/ca.pem --cert $certs/client-root.pem --key $certs/client-root-key.pem \
  --clients "$C" --conns 4 --duration "$T" --workload "$W" > /tmp/bench-lg.out 2> /tmp/bench-lg.err
END=$(date +%s.%N)
kill $SAMPLER
head -1 /tmp/bench-lg.out
ops=$(grep -o '"ops_per_s":[0-9.]*' /tmp/bench-lg.out | cut -d: -f2)
python3 - "$END" "$T" "$ops" "$(getconf CLK_TCK)" <<'PY'
import sys
end, secs, ops, tick = map(float, sys.argv[1:])
rows = [tuple(map(float, l.split())) for l in open('/tmp/bench-cpu') if len(l.split()) == 2]
timed = [r for r in rows if end - secs + 0.5 <= r[0] <= end - 0.3]
(t0, c0), (t1, c1) = timed[0], timed[-1]
print('server cpu/op us: %.1f (cores busy %.2f)' % ((c1 - c0) / tick * 1e6 / (ops * (t1 - t0)), (c1 - c0) / tick / (t1 - t0)))
PY
grep "loadgen cpu" /tmp/bench-lg.err | python3 -c "import sys; u,s=map(float,sys.stdin.read().split()[2:4]); print('loadgen cpu/op us: %.1f' % ((u+s)*1e6/($ops*$T)))"
stop_dev
