#!/usr/bin/env bash
# Runs the aarch64 device build under qemu-user: `--version`, then a short
# synthetic scan whose heart rate must be right. Builds it first if needed.
#
#   cross/check.sh            # aarch64 (the Pi 4/5 and Jetson binary)
#   cross/check.sh armv7
set -euo pipefail
cd "$(dirname "$0")/.."
t=${1:-aarch64}
case "$t" in
  aarch64) triple=aarch64-unknown-linux-gnu; gnu=aarch64-linux-gnu; qemu=qemu-aarch64-static ;;
  armv7) triple=armv7-unknown-linux-gnueabihf; gnu=arm-linux-gnueabihf; qemu=qemu-arm-static ;;
  *) echo "unknown target $t: use aarch64 or armv7" >&2; exit 2 ;;
esac
if ! command -v "$qemu" >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && apt-get install -y -qq qemu-user-static
  else sudo apt-get update -qq && sudo apt-get install -y -qq qemu-user-static; fi
fi
bin="target/$triple/release/rppg-agent"
[ -x "$bin" ] || cross/build.sh "$t"
run() { "$qemu" -L "/usr/$gnu" "$bin" "$@"; }

echo "== $bin under $qemu"
run --version
want=75
out=$(run scan --input "synthetic:hr=$want,rr=15,width=320,height=240,seconds=21" --seconds 20 --json -q)
echo "$out"
hr=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["heart_rate_bpm"])')
python3 - "$hr" "$want" <<'PY'
import sys
hr, want = float(sys.argv[1]), float(sys.argv[2])
assert abs(hr - want) < 3, f"heart rate {hr} is not within 3 bpm of {want}"
print(f"ok: heart rate {hr} bpm (true {want})")
PY
