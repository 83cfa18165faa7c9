#!/usr/bin/env bash
# weir bench with its attempt spans off (log filter warn), on (info, as `weir serve` runs),
# exported over OTLP to a local sink (every trace, and 1 % of traces), alternated round by
# round on the same machine. Prints each run and the medians against "off".
# Usage: benches/tracing-overhead.sh [ROUNDS] [TASKS] [--memory]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
tasks=${2:-200000}
extra=${3:-}
cargo build --quiet --release -p weir --bin weir
# An OTLP/HTTP sink that reads and drops what it is sent.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 - "$port" <<'PY' &
import http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer): daemon_threads = True
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
sink=$!
trap 'kill $sink' EXIT
ep="OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$port"
out=$(mktemp)
for r in $(seq "$rounds"); do
  for mode in off on otel-all otel-1pct; do
    log="info,lapin=off"; envs="X=1"
    case $mode in
      off) log="warn,lapin=off" ;;
      otel-all) envs="$ep" ;;
      otel-1pct) envs="$ep OTEL_TRACES_SAMPLER=traceidratio OTEL_TRACES_SAMPLER_ARG=0.01" ;;
    esac
    # shellcheck disable=SC2086
    echo "$mode $(env $envs target/release/weir --log "$log" bench --tasks "$tasks" $extra --json)" | tee -a "$out"
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
d = {}
for line in open(sys.argv[1]):
    mode, j = line.split(" ", 1)
    d.setdefault(mode, []).append(json.loads(j)["tasks_per_sec"])
off = statistics.median(d["off"])
for m in ["off", "on", "otel-all", "otel-1pct"]:
    v = statistics.median(d[m])
    print(f"{m:10} median {v:8.0f} tasks/s  {v / off:.3f}x of off")
PY
