#!/usr/bin/env bash
# Benchmarks flintlockd end to end on this host and prints tables against
# the project's targets and upstream flintlock's figures: create→running
# latency and throughput (guests started paused, so their boot is not
# counted), delete and List latency, the daemon's RSS, and the Go
# micro-benchmarks. Needs root. Arguments go to the bench program
# (test/bench; -h lists them), e.g. hack/bench.sh -rss-vms 50 -micro=false.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "bench: run as root (containerd, mounts, QEMU)" >&2
  exit 1
fi

# Unix socket paths live in the scratch folder: keep it short.
dir=$(mktemp -d "${TMPDIR:-/tmp}/lm-bench-XXXXXX")

# The bench program removes everything it started, also on Ctrl-C. This is
# the safety net for when it could not (killed): end any process of this
# run (by pid), unmount what is left under the folder, then remove it.
cleanup() {
  local p cmd killed=0
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = "$$" ] && continue
    cmd=$({ tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null) || continue
    if [[ $cmd == *"$dir"* ]] && kill -KILL "$p" 2>/dev/null; then
      killed=$((killed + 1))
    fi
  done
  [ "$killed" -eq 0 ] || echo "bench: killed $killed leftover processes of the run" >&2
  local m
  while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done < <(awk -v d="$dir" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  if awk -v d="$dir" 'index($5, d) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
    echo "bench: mounts remain under $dir; not removing it" >&2
  else
    rm -rf "$dir"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

go build -o "$dir/bin/" ./cmd/flintlockd ./cmd/fl
go build -o "$dir/bin/bench" ./test/bench
"$dir/bin/bench" -flintlockd "$dir/bin/flintlockd" -fl "$dir/bin/fl" -dir "$dir" "$@"
