#!/usr/bin/env bash
# Resident memory of a `weir serve` worker whose embedded queue holds N pending jobs
# (default 1,000,000): jobs live on disk; the worker keeps only their ready order in memory.
#
#   benches/rss-pending.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
cargo build --release --quiet -p weir
weir=$PWD/target/release/weir
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
db="sqlite:$dir/rss.db"
python3 -c "
import sys
line = '{\"kind\":\"sleep\",\"payload\":{\"ms\":60000}}\n'
sys.stdout.write(line * $n)
" > "$dir/jobs.jsonl"
/usr/bin/time -f "fill: %e s, enqueue process max RSS %M KiB" "$weir" --broker "$db" enqueue --batch "$dir/jobs.jsonl"
"$weir" --broker "$db" --log warn serve --workers 16 &
pid=$!
sleep 10
rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
hwm=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
"$weir" --broker "$db" status
echo "weir serve with $n pending jobs: VmRSS ${rss} KiB ($((rss / 1024)) MiB), peak ${hwm} KiB ($((hwm / 1024)) MiB)"
