#!/usr/bin/env bash
# Regenerates the Go code of the API from api/**/*.proto with the pinned
# generators of hack/tools and Debian's protoc. With an argument, writes the
# generated files under that folder instead of api/ (the staleness test uses
# this to compare).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/api}
bin="$root/bin/tools"
mkdir -p "$bin" "$out"
(cd "$root/hack/tools" && go build -o "$bin/" \
  google.golang.org/protobuf/cmd/protoc-gen-go \
  google.golang.org/grpc/cmd/protoc-gen-go-grpc \
  github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway)
cd "$root/api"
export PATH="$bin:$PATH"
protoc -I . \
  --go_out="$out" --go_opt=paths=source_relative \
  types/microvm.proto
protoc -I . \
  --go_out="$out" --go_opt=paths=source_relative \
  --go-grpc_out="$out" --go-grpc_opt=paths=source_relative \
  --grpc-gateway_out="$out" --grpc-gateway_opt=paths=source_relative \
  --grpc-gateway_opt=grpc_api_configuration=services/microvm/v1alpha1/gateway.yaml \
  --grpc-gateway_opt=generate_unbound_methods=false \
  services/microvm/v1alpha1/microvms.proto
protoc -I . \
  --go_out="$out" --go_opt=paths=source_relative \
  --go-grpc_out="$out" --go-grpc_opt=paths=source_relative \
  --grpc-gateway_out="$out" --grpc-gateway_opt=paths=source_relative \
  --grpc-gateway_opt=grpc_api_configuration=services/host/v1alpha1/gateway.yaml \
  --grpc-gateway_opt=generate_unbound_methods=false \
  services/host/v1alpha1/host.proto
protoc -I . \
  --go_out="$out" --go_opt=paths=source_relative \
  --go-grpc_out="$out" --go-grpc_opt=paths=source_relative \
  --grpc-gateway_out="$out" --grpc-gateway_opt=paths=source_relative \
  --grpc-gateway_opt=grpc_api_configuration=services/power/v1alpha1/gateway.yaml \
  --grpc-gateway_opt=generate_unbound_methods=false \
  services/power/v1alpha1/power.proto
