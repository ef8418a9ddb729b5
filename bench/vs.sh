#!/bin/bash
# usage: bench/vs.sh [ROUNDS [WORKLOAD [CLIENTS]]]  (4, put, 64)
# Ours and etcd back to back, ROUNDS times; each pair's ratio and the medians at the end.
cd "$(dirname "$0")"
R=${1:-4}; W=${2:-put}; C=${3:-64}
: > /tmp/bench-vs.res
for _ in $(seq 1 "$R"); do
  echo "ours $(./ours.sh "$W" "$C" 8 2>/dev/null | head -2 | tr '\n' ' ')" | tee -a /tmp/bench-vs.res
  echo "etcd $(./etcd.sh "$W" "$C" 8 2>/dev/null | head -2 | tr '\n' ' ')" | tee -a /tmp/bench-vs.res
done
python3 - <<'PY'
import re, statistics, collections
ops = collections.defaultdict(list); p99 = collections.defaultdict(list)
for line in open('/tmp/bench-vs.res'):
    who = line.split()[0]; m = re.search(r': (\d+) ops/s', line); q = re.search(r'p99=(\d+)us', line)
    if m: ops[who].append(int(m.group(1))); p99[who].append(int(q.group(1)))
for who in ops: print(who, 'ops/s', ops[who], 'median', statistics.median(ops[who]), 'p99 us', p99[who], 'median', statistics.median(p99[who]))
ratios = [a / b for a, b in zip(ops['ours'], ops['etcd'])]
print('ratio per pair', ['%.2f' % r for r in ratios], 'median %.2f' % statistics.median(ratios))
PY
