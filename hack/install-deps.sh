#!/usr/bin/env bash
# Installs the Debian packages flintlockd, its tests and the demo need.
# Idempotent and quiet when everything is already there. Needs root.
set -euo pipefail
pkgs=(
  containerd
  qemu-system-x86
  qemu-utils
  e2fsprogs
  xfsprogs
  busybox-static
  cpio
  kmod
  protobuf-compiler
  libprotobuf-dev
  iproute2
  dosfstools
  xz-utils
  zstd
  curl
  jq
  dnsmasq-base
  nftables
  debootstrap
)
# The unprivileged user QEMU runs as by default (flintlockd --vmm-user).
if [ "$(id -u)" -eq 0 ] && ! getent passwd flintlock-vmm >/dev/null; then
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin flintlock-vmm
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: need root to install: ${missing[*]}" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  cat "$log" >&2
  rm -f "$log"
  exit 1
fi
rm -f "$log"
