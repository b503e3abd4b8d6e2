#!/usr/bin/env bash
# Builds the CNCF distribution registry (used by tests and the demo as a
# local OCI registry) from the Go module proxy into
# bin/cache/registry-<version>/registry, in a throwaway module so that it
# never touches the project's go.mod. Idempotent: quiet and quick when the
# binary is already there. Prints nothing on success unless it built.
set -euo pipefail
version=${REGISTRY_VERSION:-v3.1.2}
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/bin/cache/registry-$version"
bin="$dir/registry"
[ -x "$bin" ] && exit 0

mkdir -p "$dir"
# Parallel callers (several test packages) wait for one build.
exec 9>"$dir/.lock"
flock 9
[ -x "$bin" ] && exit 0

echo "building distribution registry $version (first time only, takes a few minutes)" >&2
src="$dir/src"
rm -rf "$src"
mkdir -p "$src"
cd "$src"
cat >go.mod <<MOD
module liquidmetal.local/registry-build

go 1.26
MOD
export GOFLAGS=-mod=mod GOWORK=off
go get "github.com/distribution/distribution/v3/cmd/registry@$version" >/dev/null 2>&1 ||
  go get "github.com/distribution/distribution/v3/cmd/registry@$version"
go build -trimpath -o "$bin.tmp" github.com/distribution/distribution/v3/cmd/registry
mv -f "$bin.tmp" "$bin"
echo "built $bin" >&2
