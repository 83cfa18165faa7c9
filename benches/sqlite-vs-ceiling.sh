#!/usr/bin/env bash
# weir's end-to-end throughput on the embedded queue against the raw SQLite ceiling
# (../shared/bench/sqlite-ceiling, `mem` mode), alternated in the same run because these
# machines are shared and noisy. Prints each run and the medians and their ratio.
#
#   benches/sqlite-vs-ceiling.sh [ROUNDS] [TASKS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
tasks=${2:-200000}
ceiling_dir=${CEILING_DIR:-../shared/bench/sqlite-ceiling}
cargo build --release --quiet -p weir
cargo build --release --quiet --manifest-path "$ceiling_dir/Cargo.toml" --target-dir target/ceilings
weir=target/release/weir
ceiling=target/ceilings/release/sqlite-ceiling
w=(); c=()
for i in $(seq "$rounds"); do
  cr=$("$ceiling" "$tasks" 1000 full mem | sed -n 's/.*rate=\([0-9]*\).*/\1/p')
  wr=$("$weir" bench --tasks "$tasks" --json | tail -1 | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["tasks_per_sec"]))')
  echo "round $i: ceiling(mem) ${cr}/s  weir ${wr}/s"
  c+=("$cr"); w+=("$wr")
done
python3 - "${c[*]}" "${w[*]}" <<'PY'
import statistics, sys
c = [int(x) for x in sys.argv[1].split()]; w = [int(x) for x in sys.argv[2].split()]
mc, mw = statistics.median(c), statistics.median(w)
print(f"median ceiling {mc:.0f}/s  median weir {mw:.0f}/s  ratio {mw/mc:.2f}")
PY
