#!/usr/bin/env bash
# Builds Cluster API from the Go module proxy into bin/cache/capi-<version>/,
# in a throwaway module so that the project's go.mod is never touched:
#   capi-manager                    the core manager (module root)
#   kubeadm-bootstrap-manager       bootstrap/kubeadm
#   kubeadm-control-plane-manager   controlplane/kubeadm
#   clusterctl                      cmd/clusterctl
# and extracts the providers' manifests from the module's config/ folders:
#   crds/<provider>/*.yaml          the CRDs as generated (config/crd/bases);
#                                   what envtest loads
#   components/<provider>.yaml      config/default rendered with kustomize
#                                   (what clusterctl init would install)
#   webhooks/<provider>.yaml        only the Mutating/ValidatingWebhook-
#                                   Configurations of that rendering
# with <provider> one of core, bootstrap-kubeadm, control-plane-kubeadm.
# Idempotent and silent when cached; one line on stderr when it builds (cold:
# a few minutes). Concurrent callers wait on a lock. Prints the folder with -p.
set -euo pipefail
version=${CAPI_VERSION:-v1.12.0}
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/bin/cache/capi-$version"
bins=(capi-manager kubeadm-bootstrap-manager kubeadm-control-plane-manager clusterctl)
providers=(core bootstrap-kubeadm control-plane-kubeadm)

# shellcheck source=lib/cache.sh
. "$root/hack/lib/cache.sh"

cached() {
  local b
  for b in "${bins[@]}"; do [ -x "$dir/$b" ] || return 1; done
  [ -f "$dir/.manifests-done" ]
}

cache_enter "$@"
cache_begin build-capi "building Cluster API $version managers and clusterctl into $dir (first time only, a few minutes)"

# --- binaries -----------------------------------------------------------
src="$dir/src"
cache_module "$src" liquidmetal.local/capi-build
cat >tools.go <<'GO'
//go:build tools

// Package tools pins the Cluster API commands this throwaway module builds.
package tools

import (
	_ "sigs.k8s.io/cluster-api"
	_ "sigs.k8s.io/cluster-api/bootstrap/kubeadm"
	_ "sigs.k8s.io/cluster-api/cmd/clusterctl"
	_ "sigs.k8s.io/cluster-api/controlplane/kubeadm"
)
GO
go get "sigs.k8s.io/cluster-api@$version" >>"$log" 2>&1 || fail "resolving sigs.k8s.io/cluster-api@$version"
go mod tidy >>"$log" 2>&1 || fail "resolving the Cluster API dependencies"

minor=${version#v1.}
minor=${minor%%.*}
date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
v=sigs.k8s.io/cluster-api/version
# clusterctl compares its own version with providers' metadata.yaml.
ldflags="-s -w -X $v.gitVersion=$version -X $v.gitMajor=1 -X $v.gitMinor=$minor"
ldflags+=" -X $v.gitTreeState=clean -X $v.buildDate=$date"
mkdir -p out
build() { # package output-name
  nice -n 10 go build -trimpath -ldflags "$ldflags" -o "out/$2" "$1" >>"$log" 2>&1 ||
    fail "building $1"
}
build sigs.k8s.io/cluster-api capi-manager
build sigs.k8s.io/cluster-api/bootstrap/kubeadm kubeadm-bootstrap-manager
build sigs.k8s.io/cluster-api/controlplane/kubeadm kubeadm-control-plane-manager
build sigs.k8s.io/cluster-api/cmd/clusterctl clusterctl

# --- manifests ----------------------------------------------------------
mod=$(go list -m -f '{{.Dir}}' sigs.k8s.io/cluster-api 2>>"$log") || fail "locating the cluster-api module"
# kustomize is pinned in hack/tools like the other generators.
tools="$root/bin/tools"
mkdir -p "$tools"
(cd "$root/hack/tools" && GOFLAGS=-buildvcs=false go build -o "$tools/" sigs.k8s.io/kustomize/kustomize/v5) >>"$log" 2>&1 ||
  fail "building kustomize"
stage="$src/manifests"
rm -rf "$stage"
mkdir -p "$stage/crds" "$stage/components" "$stage/webhooks"
for p in "${providers[@]}"; do
  case $p in
  core) cfg="$mod/config" ;;
  bootstrap-kubeadm) cfg="$mod/bootstrap/kubeadm/config" ;;
  control-plane-kubeadm) cfg="$mod/controlplane/kubeadm/config" ;;
  esac
  mkdir -p "$stage/crds/$p"
  cp "$cfg"/crd/bases/*.yaml "$stage/crds/$p/"
  # The module cache is read-only; kustomize only reads, so render in place.
  "$tools/kustomize" build "$cfg/default" >"$stage/components/$p.yaml" 2>>"$log" ||
    fail "kustomize build of $p"
  # Keep the YAML documents whose top-level kind is a webhook configuration.
  awk '
    function flush() { if (keep && doc != "") printf "---\n%s", doc; doc = ""; keep = 0 }
    /^---$/ { flush(); next }
    /^kind: (Mutating|Validating)WebhookConfiguration$/ { keep = 1 }
    { doc = doc $0 "\n" }
    END { flush() }
  ' "$stage/components/$p.yaml" >"$stage/webhooks/$p.yaml"
  [ -s "$stage/webhooks/$p.yaml" ] || fail "extracting the webhooks of $p"
done
chmod -R u+w "$stage"

for b in "${bins[@]}"; do mv -f "out/$b" "$dir/$b"; done
rm -rf "$dir/crds" "$dir/components" "$dir/webhooks"
mv "$stage/crds" "$stage/components" "$stage/webhooks" "$dir/"
cp "$mod/metadata.yaml" "$dir/metadata.yaml"
chmod u+w "$dir/metadata.yaml"
echo "$version built $date" >"$dir/VERSION"
touch "$dir/.manifests-done"
cache_finish
