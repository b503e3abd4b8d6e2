#!/usr/bin/env bash
# Writes CAPMVM's clusterctl release artifacts to one folder laid out as a
# clusterctl local repository:
#   <out>/infrastructure-microvm/<version>/infrastructure-components.yaml
#   <out>/infrastructure-microvm/<version>/metadata.yaml
#   <out>/infrastructure-microvm/<version>/cluster-template*.yaml
#   <out>/infrastructure-microvm/<version>/clusterclass-*.yaml
#   <out>/clusterctl.yaml   a clusterctl config naming that repository
# infrastructure-components.yaml is config/default rendered with kustomize
# (pinned in hack/tools), with the manager image tagged as the release.
#
# Usage: hack/release-artifacts.sh [OUT]     (default: bin/release)
# Environment: VERSION (default v0.1.0; metadata.yaml must list its
# major.minor series).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/bin/release}
version=${VERSION:-v0.1.0}

die() {
  echo "release-artifacts: $*" >&2
  exit 1
}

[[ $version =~ ^v([0-9]+)\.([0-9]+)\.([0-9]+)(-[0-9A-Za-z.-]+)?$ ]] ||
  die "VERSION $version is not a semantic version vX.Y.Z"
major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}
# clusterctl refuses a release whose series metadata.yaml does not list.
awk -v maj="$major" -v min="$minor" '
  /^- *major:/ { m = $NF } /^ *major:/ { m = $NF }
  /minor:/ { if (m == maj && $NF == min) found = 1 }
  END { exit !found }
' "$root/metadata.yaml" || die "metadata.yaml has no release series $major.$minor for $version"

mkdir -p "$out"
out=$(cd "$out" && pwd)
kustomize="$root/bin/tools/kustomize"
if [ ! -x "$kustomize" ]; then
  mkdir -p "$root/bin/tools"
  (cd "$root/hack/tools" && GOWORK=off GOFLAGS=-buildvcs=false go build -o "$root/bin/tools/" sigs.k8s.io/kustomize/kustomize/v5) ||
    die "building kustomize failed"
fi

stage=$(mktemp -d "$out/.stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
"$kustomize" build "$root/config/default" >"$stage/infrastructure-components.yaml" ||
  die "kustomize build config/default failed"
# The manager image is this release's (config/manager says :dev);
# clusterctl's image overrides (the "images" of its configuration) change it.
sed -i "s#^\( *image: [^ ]*/capmvm\):dev\$#\1:$version#" "$stage/infrastructure-components.yaml"
grep -q "/capmvm:$version\$" "$stage/infrastructure-components.yaml" ||
  die "config/manager has no manager image .../capmvm:dev to tag $version"
cp "$root/metadata.yaml" "$stage/"
cp "$root"/templates/cluster-template*.yaml "$root"/templates/clusterclass-*.yaml "$stage/"

dest="$out/infrastructure-microvm/$version"
mkdir -p "$(dirname "$dest")"
rm -rf "$dest"
mv "$stage" "$dest"
trap - EXIT
chmod 0755 "$dest"

cat >"$out/clusterctl.yaml" <<YAML
# clusterctl configuration for the local repository next to this file:
#   clusterctl generate cluster NAME --config $out/clusterctl.yaml \\
#     --infrastructure microvm:$version --target-namespace default
providers:
- name: microvm
  type: InfrastructureProvider
  url: file://$dest/infrastructure-components.yaml
YAML
echo "$dest"
