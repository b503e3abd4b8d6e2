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

print=false
[ "${1:-}" = "-p" ] && print=true

cached() {
  local b
  for b in "${bins[@]}"; do [ -x "$dir/$b" ] || return 1; done
}
done_() {
  if $print; then echo "$dir"; fi
  exit 0
}

cached && done_
mkdir -p "$dir"
# Parallel callers (several test packages, make targets) wait for one build.
exec 9>"$dir/.lock"
flock 9
cached && done_

echo "building kube-apiserver, kube-controller-manager, kubectl $kube_version and etcd $etcd_version into $dir (first time only, about 10 min)" >&2
log="$dir/build.log"
: >"$log"
fail() {
  echo "build-kube: $1 failed; last lines of $log:" >&2
  tail -n 40 "$log" >&2
  exit 1
}

export GOWORK=off GOFLAGS="-mod=mod -buildvcs=false"
# Low priority: other people's tests share the CPUs.
build=(nice -n 10 go build -trimpath)

# --- Kubernetes ---------------------------------------------------------
# k8s.io/kubernetes replaces its staging repos (k8s.io/api, client-go, ...)
# with ./staging paths, which do not exist outside its repository; replace
# each with the published v0.<minor>.<patch> module instead.
staging_version="v0${kube_version#v1}"
src="$dir/src"
rm -rf "$src"
mkdir -p "$src"
cd "$src"
{
  echo "module liquidmetal.local/kube-build"
  echo
  echo "go 1.26"
} >go.mod
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
gomod=$(go mod download -json "k8s.io/kubernetes@$kube_version" 2>>"$log" |
  sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p') || fail "downloading k8s.io/kubernetes@$kube_version"
[ -n "$gomod" ] || fail "downloading k8s.io/kubernetes@$kube_version"
staging=$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/.*#\1#p' "$gomod")
[ -n "$staging" ] || fail "reading the staging repos of k8s.io/kubernetes@$kube_version"
for m in $staging; do
  go mod edit -replace "$m=$m@$staging_version"
done
go get "k8s.io/kubernetes@$kube_version" >>"$log" 2>&1 || fail "resolving k8s.io/kubernetes@$kube_version"
go mod tidy >>"$log" 2>&1 || fail "resolving the Kubernetes dependencies"

# Without the stamp the binaries report v0.0.0-master and clients (kubectl,
# controller-runtime) refuse or mis-detect the server.
minor=${kube_version#v1.}
minor=${minor%%.*}
date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
done
mkdir -p "$src/out"
"${build[@]}" -ldflags "$ldflags" -o "$src/out/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl >>"$log" 2>&1 || fail "building Kubernetes $kube_version"

# --- etcd ---------------------------------------------------------------
# Its own module: etcd pins newer gRPC/OpenTelemetry than Kubernetes does.
esrc="$dir/src-etcd"
rm -rf "$esrc"
mkdir -p "$esrc"
cd "$esrc"
printf 'module liquidmetal.local/etcd-build\n\ngo 1.26\n' >go.mod
go get "go.etcd.io/etcd/server/v3@$etcd_version" >>"$log" 2>&1 || fail "resolving etcd $etcd_version"
"${build[@]}" -ldflags "-s -w" -o "$esrc/etcd" go.etcd.io/etcd/server/v3 >>"$log" 2>&1 ||
  fail "building etcd $etcd_version"

for b in kube-apiserver kube-controller-manager kubectl; do
  mv -f "$src/out/$b" "$dir/$b"
done
mv -f "$esrc/etcd" "$dir/etcd"
echo "$kube_version etcd-$etcd_version built $date" >"$dir/VERSION"
if $print; then echo "$dir"; fi
