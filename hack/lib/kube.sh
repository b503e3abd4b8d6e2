# shellcheck shell=bash
# Building k8s.io/kubernetes commands outside its repository, shared by
# hack/build-kube.sh (control plane) and hack/build-kube-node.sh (node).
# Needs hack/lib/cache.sh (fail, log) and kube_version.

# kube_require makes the current throwaway module require
# k8s.io/kubernetes@$kube_version. That module replaces its staging repos
# (k8s.io/api, client-go, ...) with ./staging paths, which do not exist
# outside its repository; each is replaced with the published
# v0.<minor>.<patch> module instead.
kube_require() {
  local staging_version="v0${kube_version#v1}" gomod staging m
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
}

# kube_build OUT PKG... builds the commands into OUT/ stamped with
# $kube_version and the build date $date: without the stamp they report
# v0.0.0-master, clients (kubectl, controller-runtime) refuse or mis-detect
# the server, and kubeadm picks the wrong control-plane images.
kube_build() {
  local out=$1 minor ldflags pkg
  shift
  minor=${kube_version#v1.}
  minor=${minor%%.*}
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  mkdir -p "$out"
  # Low priority: other people's tests share the CPUs.
  nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$out/" "$@" >>"$log" 2>&1 ||
    fail "building Kubernetes $kube_version"
}
