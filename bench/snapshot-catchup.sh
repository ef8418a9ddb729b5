#!/bin/bash
# usage: bench/snapshot-catchup.sh [KEYS]  (600000)
# How long a node stops answering while it catches up from a large snapshot. Three nodes
# (mutual TLS, one thread each); KEYS puts of 200-byte values; node 3 killed; 250,000 more
# puts, so that the leader snapshots and compacts past node 3's log; node 3 restarted: it
# catches up from the leader's snapshot. Meanwhile node 3's status is asked every 20 ms for
# 40 s; prints the slowest calls and node 3's snapshot log lines.
set -u
. "$(dirname "$0")/common.sh"
KEYS=${1:-600000}
D=/tmp/snapshot-catchup
pkill -f "data-dir=$D/" ; sleep 1; rm -rf $D; mkdir -p $D
"$BIN/kvctl" certs --dir $D/certs --nodes n1,n2,n3 --clients root > /dev/null
cp "$HERE/../config/auth-policy.toml" $D/
IC=n1=127.0.0.1:25801,n2=127.0.0.1:25802,n3=127.0.0.1:25803
c=$D/certs
node() { # N: starts node N in the background, prints its pid
  local i=$1
  RUST_LOG=info "$BIN/kvctl" node --name=n$i --initial-cluster=$IC --data-dir=$D/n$i \
    --listen-peer-address=127.0.0.1:2580$i --listen-client-address=127.0.0.1:2579$i \
    --peer-cert-file=$c/n$i.pem --peer-key-file=$c/n$i-key.pem --peer-trusted-ca-file=$c/ca.pem \
    --cert-file=$c/n$i.pem --key-file=$c/n$i-key.pem --trusted-ca-file=$c/ca.pem \
    --auth-policy-file=$D/auth-policy.toml --threads=1 --scheduling=batch >> $D/n$i.log 2>&1 &
  echo $!
}
P1=$(node 1); P2=$(node 2); P3=$(node 3)
trap 'kill $P1 $P2 $P3 2> /dev/null; wait' EXIT
sleep 4
K="$BIN/kvctl --cacert $c/ca.pem --cert $c/client-root.pem --key $c/client-root-key.pem"
TWO=127.0.0.1:25791,127.0.0.1:25792
bench() { # ENDPOINTS COUNT
  $K --endpoints $1 bench --workload put --clients 128 --conns 4 --keyspace $KEYS \
    --value-size 200 --count $2 --output json 2> /dev/null | tail -1 | grep -o '"ops_per_second":[0-9]*'
}
bench $TWO,127.0.0.1:25793 $KEYS
kill -9 $P3; wait $P3 2> /dev/null
bench $TWO 250000
ls -l $D/n1/*.snap | awk '{print "leader snapshot bytes:", $5}'
P3=$(node 3)
python3 - $K --endpoints 127.0.0.1:25793 --timeout 30 status <<'PY'
import subprocess, sys, time
calls = []
end = time.time() + 40
while time.time() < end:
    start = time.time()
    subprocess.run(sys.argv[1:], capture_output=True)
    calls.append((time.time() - start, time.strftime('%H:%M:%S')))
    time.sleep(0.02)
calls.sort(reverse=True)
print('status calls', len(calls), 'slowest (s, when):', [('%.3f' % d, t) for d, t in calls[:5]])
PY
grep -h "restoring from a snapshot\|installed the leader.s snapshot" $D/n3.log | tail -2 | cut -c1-200
