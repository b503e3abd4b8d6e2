#!/usr/bin/env bash
# Builds the Kubernetes node binaries the node OS image ships (kubelet,
# kubeadm, kubectl) from the Go module proxy into
# bin/cache/kube-node-<version>/, the same way hack/build-kube.sh builds the
# control plane (hack/lib/kube.sh): a throwaway module requiring
# k8s.io/kubernetes with its staging repos replaced by the published
# v0.<minor>.<patch> modules, static binaries (CGO off) stamped with the
# version. Idempotent and silent when cached; one line on stderr when it
# builds (cold: about 5 min with a warm Go build cache from build-kube.sh).
# Concurrent callers wait on a lock for one build. Prints the folder with -p.
set -euo pipefail
kube_version=${KUBE_VERSION:-v1.34.4}
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/bin/cache/kube-node-$kube_version"
bins=(kubelet kubeadm kubectl)
# shellcheck source=lib/cache.sh
. "$root/hack/lib/cache.sh"
# shellcheck source=lib/kube.sh
. "$root/hack/lib/kube.sh"

cached() {
  local b
  for b in "${bins[@]}"; do [ -x "$dir/$b" ] || return 1; done
  [ -f "$dir/VERSION" ]
}

cache_enter "$@"
cache_begin build-kube-node "building kubelet, kubeadm, kubectl $kube_version into $dir (first time only, several minutes)"
export CGO_ENABLED=0
date=$(date -u +%Y-%m-%dT%H:%M:%SZ)

src="$dir/src"
cache_module "$src" liquidmetal.local/kube-node-build
cat >tools.go <<'GO'
//go:build tools

// Package tools pins the Kubernetes commands this throwaway module builds.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kubeadm"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
kube_require
kube_build "$src/out" \
  k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kubeadm \
  k8s.io/kubernetes/cmd/kubectl

for b in "${bins[@]}"; do
  mv -f "$src/out/$b" "$dir/$b"
done
echo "$kube_version built $date" >"$dir/VERSION"
cache_finish
