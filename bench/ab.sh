#!/bin/bash
# usage: bench/ab.sh ROUNDS "NAME:BINDIR:ENV" ...
# Interleaved rounds over several builds or settings (W=put, C=64 by default, 8 s each);
# ratios of each variant's ops/s to the last one's, per round, and medians. ENV is passed to
# the cluster, for example "new:/tmp/new:KV_SNAPSHOT_ENTRIES=10000" "old:target/release:".
R=$1; shift
HERE=$(cd "$(dirname "$0")" && pwd)
: > /tmp/bench-ab.res
for _ in $(seq 1 "$R"); do
  for variant in "$@"; do
    IFS=: read -r name bin env <<< "$variant"
    [ -z "$bin" ] || bin=$(cd "$bin" && pwd) # relative to where the script was started
    out=$(BIN=$bin NODEENV="env $env" "$HERE/ours.sh" "${W:-put}" "${C:-64}" 8 2>/dev/null | head -2 | tr '\n' ' ')
    echo "$name $out" | tee -a /tmp/bench-ab.res
  done
done
python3 - "$@" <<'PY'
import re, statistics, collections, sys
names = [a.split(':')[0] for a in sys.argv[1:]]
ops = collections.defaultdict(list); cpu = collections.defaultdict(list); p99 = collections.defaultdict(list)
for line in open('/tmp/bench-ab.res'):
    who = line.split()[0]; m = re.search(r': (\d+) ops/s', line); k = re.search(r'cpu/op us: ([\d.]+)', line); q = re.search(r'p99=(\d+)us', line)
    if m: ops[who].append(int(m.group(1))); p99[who].append(int(q.group(1)))
    if k: cpu[who].append(float(k.group(1)))
base = names[-1]
for who in names:
    ratios = [a / b for a, b in zip(ops[who], ops[base])]
    print(who, 'ops/s median', statistics.median(ops[who]), ops[who], 'p99 median', statistics.median(p99[who]),
          'cpu/op median', statistics.median(cpu[who]) if cpu[who] else '-',
          'ratio to %s median %.2f' % (base, statistics.median(ratios)), ['%.2f' % r for r in ratios])
PY
