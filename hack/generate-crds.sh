#!/usr/bin/env bash
# Regenerates the CAPMVM API's deepcopy code and CRDs from the kubebuilder
# markers in api/infrastructure, and the manager's ClusterRole
# (config/rbac/role.yaml) from the +kubebuilder:rbac markers of
# internal/controller, with the controller-gen pinned in hack/tools.
# With an argument, writes the generated files under that folder, laid out as
# in the repository (api/infrastructure/v1alpha1, config/crd/bases,
# config/rbac), instead of in place (the staleness tests use this to compare).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root}
bin="$root/bin/tools"
mkdir -p "$bin" "$out/api/infrastructure/v1alpha1" "$out/config/crd/bases" "$out/config/rbac"
(cd "$root/hack/tools" && go build -o "$bin/" sigs.k8s.io/controller-tools/cmd/controller-gen)
cd "$root"
"$bin/controller-gen" \
  object paths=./api/infrastructure/v1alpha1/... \
  output:object:dir="$out/api/infrastructure/v1alpha1"
"$bin/controller-gen" \
  crd paths=./api/infrastructure/v1alpha1/... \
  output:crd:dir="$out/config/crd/bases"

# Admission webhook configurations from the +kubebuilder:webhook markers of
# internal/webhook (config/webhook/manifests.yaml).
mkdir -p "$out/config/webhook"
"$bin/controller-gen" \
  webhook paths=./internal/webhook/... \
  output:webhook:dir="$out/config/webhook"
"$bin/controller-gen" \
  rbac:roleName=manager-role paths=./internal/controller/... \
  output:rbac:dir="$out/config/rbac"
