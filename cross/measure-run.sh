#!/usr/bin/env bash
# CPU and memory of `rppg-agent run` in its three states, with the synthetic
# source paced at 30 fps (run it on the device to size a kiosk):
#   idle      API and delivery lanes only (no scan, no face watch)
#   scanning  one real-time scan (320x240 unless SIZE=WxH)
#   watching  auto-start on: the source is read and faces looked for at 30 fps
#   empty     auto-start on, an empty room: the face search rests
#             (vision.idle_rescan_s) until the scene changes
# The synthetic source renders every frame in the same process (about
# 1 ms a frame at 640x480 here), so it inflates every state but idle. To
# measure the agent alone, give y4m files made with `rppg-agent synth`
# (read at 30 fps, as a camera delivers them):
#   FACE=face.y4m EMPTY=empty.y4m cross/measure-run.sh
# Each state is measured over SECONDS (default 10) from /proc: CPU % of one
# core (utime + stime) and RSS; peak RSS (VmHWM) at the end.
#
#   cross/measure-run.sh [path/to/rppg-agent]
set -euo pipefail
bin=${1:-target/release/rppg-agent}
secs=${SECONDS_PER_STATE:-10}
size=${SIZE:-320x240}
w=${size%x*}; h=${size#*x}
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
hz=$(getconf CLK_TCK)

measure() { # $1 = pid, $2 = label
  local a b rss
  a=$(awk '{print $14 + $15}' "/proc/$1/stat")
  sleep "$secs"
  b=$(awk '{print $14 + $15}' "/proc/$1/stat")
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$1/status")
  awk -v l="$2" -v a="$a" -v b="$b" -v hz="$hz" -v s="$secs" -v r="$rss" \
    'BEGIN { printf "%-9s CPU %5.1f %% of one core   RSS %6.1f MiB\n", l, 100 * (b - a) / hz / s, r / 1024 }'
}

face_input=${FACE:-synthetic:width=$w,height=$h,seconds=3600}
empty_input=${EMPTY:-synthetic:width=$w,height=$h,seconds=3600,face=0,clutter=1}

start() { # $1 = extra config, $2 = input
  cat > "$dir/agent.toml" <<TOML
[run]
input = "${2:-$face_input}"
realtime = true
$1
[api]
listen = "127.0.0.1:0"
[outbox]
path = "$dir/outbox"
[scan]
duration_s = 3000.0
TOML
  "$bin" run --config "$dir/agent.toml" 2> "$dir/log" &
  pid=$!
  for _ in $(seq 50); do grep -q "addr=" "$dir/log" 2>/dev/null && break; sleep 0.1; done
  addr=$(grep -o "addr=[0-9.:]*" "$dir/log" | head -1 | cut -d= -f2)
}

echo "rppg-agent run, ${FACE:-synthetic ${w}x${h}} at 30 fps, ${secs} s per state ($(nproc) cores, $(uname -m))"
start ""
sleep 1
measure $pid idle
curl -s -XPOST "http://$addr/v1/scans" > /dev/null
sleep 1
measure $pid scanning
echo "peak RSS $(awk '/VmHWM/ {printf "%.1f MiB", $2 / 1024}' /proc/$pid/status)"
kill -TERM $pid; wait $pid || true
start "auto_start_steady_s = 3600.0"
sleep 1
measure $pid watching
kill -TERM $pid; wait $pid || true
start "auto_start_steady_s = 3600.0" "$empty_input"
sleep 3
measure $pid empty
kill -TERM $pid; wait $pid || true
