#!/usr/bin/env bash
# Builds the Kubernetes node binaries the node OS image ships (kubelet,
# kubeadm, kubectl) from the Go module proxy into
# bin/cache/kube-node-<version>/, the same way hack/build-kube.sh builds the
# control plane: a throwaway module requiring k8s.io/kubernetes with its
# staging repos replaced by the published v0.<minor>.<patch> modules, static
# binaries (CGO off) stamped with the version. Idempotent and silent when
# cached; one line on stderr when it builds (cold: about 5 min with a warm
# Go build cache from build-kube.sh). Concurrent callers wait on a lock for
# one build. Prints the folder with -p.
set -euo pipefail
kube_version=${KUBE_VERSION:-v1.34.4}
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/bin/cache/kube-node-$kube_version"
bins=(kubelet kubeadm kubectl)

print=false
[ "${1:-}" = "-p" ] && print=true

cached() {
  local b
  for b in "${bins[@]}"; do [ -x "$dir/$b" ] || return 1; done
  [ -f "$dir/VERSION" ]
}
done_() {
  if $print; then echo "$dir"; fi
  exit 0
}

cached && done_
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
cached && done_

echo "building kubelet, kubeadm, kubectl $kube_version into $dir (first time only, several minutes)" >&2
log="$dir/build.log"
: >"$log"
fail() {
  echo "build-kube-node: $1 failed; last lines of $log:" >&2
  tail -n 40 "$log" >&2
  exit 1
}

export GOWORK=off GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0
# Low priority: other people's tests share the CPUs.
build=(nice -n 10 go build -trimpath)

staging_version="v0${kube_version#v1}"
src="$dir/src"
rm -rf "$src"
mkdir -p "$src"
cd "$src"
printf 'module liquidmetal.local/kube-node-build\n\ngo 1.26\n' >go.mod
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

# kubeadm picks the control-plane images by its own version, and kubelet
# reports it to the API server: both must carry the real one.
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
  k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kubeadm \
  k8s.io/kubernetes/cmd/kubectl >>"$log" 2>&1 || fail "building Kubernetes $kube_version"

for b in "${bins[@]}"; do
  mv -f "$src/out/$b" "$dir/$b"
done
echo "$kube_version built $date" >"$dir/VERSION"
if $print; then echo "$dir"; fi
