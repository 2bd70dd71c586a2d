#!/usr/bin/env bash
# Release builds of rppg-agent for the devices, with the webcam (feature `camera`).
#
#   cross/build.sh            # both targets
#   cross/build.sh aarch64    # Raspberry Pi 4/5 (64-bit OS), Jetson
#   cross/build.sh armv7      # Raspberry Pi OS 32-bit
#
# Installs what is missing (Debian/Ubuntu host, as root or with sudo): the
# rustup targets, Debian's cross gcc (linker and the target's C headers,
# which nokhwa's V4L2 bindings need), and libclang for bindgen. Prints each
# binary's path and size. The binaries need glibc >= the host's cross
# sysroot (Debian 12: 2.36, i.e. Raspberry Pi OS bookworm, Ubuntu 24.04);
# see cross/README.md for older systems.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(aarch64 armv7)

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need_pkgs=()
for t in "${targets[@]}"; do
  case "$t" in
    aarch64) command -v aarch64-linux-gnu-gcc >/dev/null || need_pkgs+=(gcc-aarch64-linux-gnu) ;;
    armv7) command -v arm-linux-gnueabihf-gcc >/dev/null || need_pkgs+=(gcc-arm-linux-gnueabihf) ;;
    *) echo "unknown target $t: use aarch64 or armv7" >&2; exit 2 ;;
  esac
done
ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/x86_64-linux-gnu/libclang-*.so* >/dev/null 2>&1 \
  || need_pkgs+=(libclang1-14)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "installing ${need_pkgs[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed apt-get install -y -qq "${need_pkgs[@]}"
fi

for t in "${targets[@]}"; do
  case "$t" in
    aarch64) triple=aarch64-unknown-linux-gnu; gnu=aarch64-linux-gnu ;;
    armv7) triple=armv7-unknown-linux-gnueabihf; gnu=arm-linux-gnueabihf ;;
  esac
  rustup target list --installed | grep -qx "$triple" || rustup target add "$triple"
  upper=$(echo "$triple" | tr 'a-z-' 'A-Z_')
  lower=$(echo "$triple" | tr '-' '_')
  echo "building $triple (features: camera)"
  env "CARGO_TARGET_${upper}_LINKER=${gnu}-gcc" \
      "CC_${lower}=${gnu}-gcc" \
      "BINDGEN_EXTRA_CLANG_ARGS_${lower}=--sysroot=/usr/${gnu} -I/usr/${gnu}/include" \
      cargo build --release --locked --target "$triple" --features camera
  bin="target/$triple/release/rppg-agent"
  awk -v b="$bin" -v s="$(stat -c %s "$bin")" 'BEGIN { printf "%s: %d bytes (%.1f MB)\n", b, s, s / 1e6 }'
done
