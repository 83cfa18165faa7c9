#!/usr/bin/env bash
# weir bench with Prometheus metrics on (--metrics: the recorder installed, the broker
# measured, as `weir serve --http` runs) against the same build with them off, alternated
# round by round on the same machine. Prints each run and the median ratio on/off.
# Usage: benches/metrics-overhead.sh [ROUNDS] [TASKS] [--memory]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-8}
tasks=${2:-400000}
extra=${3:-}
cargo build --quiet --release -p weir --bin weir
out=$(mktemp)
for r in $(seq "$rounds"); do
  for mode in off on; do
    flag=""
    [ "$mode" = on ] && flag="--metrics"
    # shellcheck disable=SC2086
    echo "$mode $(target/release/weir bench --tasks "$tasks" $extra $flag --json)" | tee -a "$out"
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
d = {}
for line in open(sys.argv[1]):
    mode, j = line.split(" ", 1)
    d.setdefault(mode, []).append(json.loads(j)["tasks_per_sec"])
off, on = statistics.median(d["off"]), statistics.median(d["on"])
paired = statistics.median(b / a for a, b in zip(d["off"], d["on"]))
print(f"median tasks/s: off {off:.0f}, on {on:.0f}; on/off {on / off:.3f} (median of paired rounds {paired:.3f})")
PY
