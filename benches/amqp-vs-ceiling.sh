#!/usr/bin/env bash
# weir's end-to-end no-op throughput on RabbitMQ against a raw lapin publish+consume loop with
# the same durability (../shared/bench/amqp-ceiling: durable quorum queue, persistent messages,
# confirms pipelined 1000 deep, prefetch 1000, ack multiple every 100), alternated in the same
# run because these machines are shared and noisy. weir runs a pool of 1000 (so a prefetch of
# 1000), enqueues in batches of 1000 (so 1000 confirms in flight) and settles in batches.
#
#   benches/amqp-vs-ceiling.sh [ROUNDS] [TASKS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
tasks=${2:-100000}
url=${WEIR_BENCH_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
ceiling_dir=${CEILING_DIR:-../shared/bench/amqp-ceiling}
scripts/services >/dev/null
cargo build --release --quiet -p weir
cargo build --release --quiet --manifest-path "$ceiling_dir/Cargo.toml" --target-dir target/ceilings
weir=target/release/weir
ceiling=target/ceilings/release/ceiling
w=(); c=()
for i in $(seq "$rounds"); do
  cr=$(PUBJOIN=1 "$ceiling" e2e quorum "$tasks" 1000 1000 multi100 | sed -n 's/.* rate=\([0-9]*\).*/\1/p')
  wr=$("$weir" --log error bench --amqp "$url" --tasks "$tasks" --workers 1000 --json | tail -1 | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["tasks_per_sec"]))')
  echo "round $i: ceiling ${cr}/s  weir ${wr}/s"
  c+=("$cr"); w+=("$wr")
done
python3 - "${c[*]}" "${w[*]}" <<'PY'
import statistics, sys
c = [int(x) for x in sys.argv[1].split()]; w = [int(x) for x in sys.argv[2].split()]
mc, mw = statistics.median(c), statistics.median(w)
print(f"median ceiling {mc:.0f}/s  median weir {mw:.0f}/s  ratio {mw/mc:.2f}")
PY
