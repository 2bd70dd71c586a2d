#!/usr/bin/env bash
# Memory with a large backlog: EVENTS (default 1,000,000) test events are
# stored while the destination is down, then the outbox is reopened, and
# then drained for DRAIN_S seconds (default 60) into a minimal receiver
# (Python's http.server answering 200). Peak RSS of each rppg-agent process
# comes from /usr/bin/time -f %M. Needs python3; uses about 1 GB of disk.
#
#   cross/measure-backlog.sh [path/to/rppg-agent]
set -euo pipefail
bin=${1:-target/release/rppg-agent}
events=${EVENTS:-1000000}
drain=${DRAIN_S:-60}
dir=$(mktemp -d)
rx_pid=
trap '[ -n "$rx_pid" ] && kill $rx_pid 2>/dev/null; rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$dir/agent.toml" <<TOML
[outbox]
path = "$dir/outbox"
max_bytes = 4294967296
[delivery]
probe_initial_s = 0.5
probe_max_s = 2.0
[[webhook]]
name = "backend"
url = "http://127.0.0.1:$port/hooks"
secrets = ["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"]
allow_insecure = true
max_in_flight = 16
TOML
peak() { /usr/bin/time -f "%M" -o "$dir/rss" "$@" > "$dir/out" 2> "$dir/err" || true; tail -1 "$dir/rss" | awk '{printf "%.1f MiB", $1/1024}'; }

start=$(date +%s)
echo "storing $events events with the destination down ..."
rss=$(peak "$bin" send-test --count "$events" --rate 0 --timeout 0 --config "$dir/agent.toml")
echo "  send-test: $(wc -l < "$dir/out") stored in $(( $(date +%s) - start )) s, peak RSS $rss"
echo "  outbox on disk: $(du -sh "$dir/outbox" | cut -f1)"
rss=$(peak "$bin" outbox stats --config "$dir/agent.toml")
echo "  outbox stats (opens and counts the backlog): peak RSS $rss"
head -2 "$dir/out" | sed 's/^/    /'

cat > "$dir/rx.py" <<'PY'
import sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 "$dir/rx.py" "$port" & rx_pid=$!
sleep 1
echo "draining for $drain s into a receiver ..."
rss=$(peak "$bin" sync --timeout "$drain" --config "$dir/agent.toml")
echo "  sync: $(cat "$dir/out"), peak RSS $rss"
