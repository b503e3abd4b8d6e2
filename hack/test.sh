#!/usr/bin/env bash
# Runs every test: unit, integration against the real containerd, registry,
# QEMU and network namespaces, the end-to-end suite against a real
# flintlockd, a staleness check of generated code, and a short fuzz pass.
# Needs root (mounts, network namespaces, containerd).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "test: run as root (the tests mount filesystems, create network devices and run containerd)" >&2
  exit 1
fi
make --no-print-directory lint
# -p 1 keeps QEMU guests of different packages from competing for the two
# cores a TCG guest already struggles with.
go test -count=1 -p 1 -timeout 40m ./...
hack/fuzz.sh
