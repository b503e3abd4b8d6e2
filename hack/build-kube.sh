#!/usr/bin/env bash
# Builds the Kubernetes control-plane binaries that envtest and the local
# management cluster run, from the Go module proxy, into
# bin/cache/kube-<version>/ (the layout KUBEBUILDER_ASSETS expects):
#   kube-apiserver, kube-controller-manager, kubectl  from k8s.io/kubernetes
#   etcd                                              from go.etcd.io/etcd/server/v3
# Each comes from its own throwaway module under that folder, so the
# project's go.mod is never touched. Idempotent and silent when cached; one
# line on stderr when it builds (cold: about 10 min, 2.5 GB of memory).
# Concurrent callers wait on a lock for one build. Prints the folder with -p.
set -euo pipefail
kube_version=${KUBE_VERSION:-v1.34.4}
etcd_version=${ETCD_VERSION:-v3.6.16}
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/bin/cache/kube-$kube_version"
bins=(kube-apiserver kube-controller-manager kubectl etcd)
# shellcheck source=lib/cache.sh
. "$root/hack/lib/cache.sh"
# shellcheck source=lib/kube.sh
. "$root/hack/lib/kube.sh"

cached() {
  local b
  for b in "${bins[@]}"; do [ -x "$dir/$b" ] || return 1; done
}

cache_enter "$@"
cache_begin build-kube "building kube-apiserver, kube-controller-manager, kubectl $kube_version and etcd $etcd_version into $dir (first time only, about 10 min)"
date=$(date -u +%Y-%m-%dT%H:%M:%SZ)

# --- Kubernetes ---------------------------------------------------------
src="$dir/src"
cache_module "$src" liquidmetal.local/kube-build
cat >tools.go <<'GO'
//go:build tools

// Package tools pins the Kubernetes commands this throwaway module builds.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
kube_require
kube_build "$src/out" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl

# --- etcd ---------------------------------------------------------------
# Its own module: etcd pins newer gRPC/OpenTelemetry than Kubernetes does.
esrc="$dir/src-etcd"
cache_module "$esrc" liquidmetal.local/etcd-build
go get "go.etcd.io/etcd/server/v3@$etcd_version" >>"$log" 2>&1 || fail "resolving etcd $etcd_version"
nice -n 10 go build -trimpath -ldflags "-s -w" -o "$esrc/etcd" go.etcd.io/etcd/server/v3 >>"$log" 2>&1 ||
  fail "building etcd $etcd_version"

for b in kube-apiserver kube-controller-manager kubectl; do
  mv -f "$src/out/$b" "$dir/$b"
done
mv -f "$esrc/etcd" "$dir/etcd"
echo "$kube_version etcd-$etcd_version built $date" >"$dir/VERSION"
cache_finish
